//! A node: its listeners, its shards, and the threads that run them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use mio::{Poll, Waker};
use tracing::{info, warn};

use crate::auth::access::{Access, PublishAccess, StreamAccess};
use crate::auth::jwt::{Expect, KeySource, Trust};
use crate::broker::cluster::{Cluster, Ticker};
use crate::broker::Broker;
use crate::delivery::admission::Quota;
use crate::delivery::history::HistoryImage;
use crate::delivery::hub::{Hub, Snapshot};
use crate::node::config::Config;
use crate::node::fdlimit;
use crate::node::guard;
use crate::node::handover::wire::Hello;
use crate::node::handover::{self, Channel, Given, Giver, Limits, Outgoing, Step, Taken};
use crate::node::listener::{self, ListenError};
use crate::node::metrics::ShardStats;
use crate::node::shard::{Node, Shard, ShardParts, WAKER};
use crate::node::tls::Certificate;
use crate::wire::cors::Cors;

/// Descriptors kept back from the default `--max-clients`: per shard an epoll, a waker, a
/// listener and a reserve, and for the process its std streams, logging, signals, and the
/// publishers and scrapers that must still get through when streams fill the node.
const FD_HEADROOM: u64 = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening sockets could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// `epoll_create` failed.
    #[error("cannot create an event loop: {0}")]
    Poll(io::Error),
    /// The eventfd behind a waker could not be created.
    #[error("cannot create a shard waker: {0}")]
    Waker(io::Error),
    /// The listener could not be added to its event loop.
    #[error("cannot register the listener: {0}")]
    Register(io::Error),
    /// The `--redis` URL is unusable.
    #[error("{0}")]
    Redis(String),
    /// A `--subscribe-jwt` or `--publish-jwt` key, or the TLS certificate, is unusable.
    #[error("{0}")]
    Keys(String),
    /// The listeners inherited in an upgrade are unusable.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// A broker thread could not be started.
    #[error("cannot start a cluster broker thread: {0}")]
    Thread(io::Error),
}

/// A bound, not yet running node.
pub struct Server {
    shards: Vec<Shard>,
    local_addr: SocketAddr,
    listener_fds: Vec<RawFd>,
    control: Control,
}

/// A handle that stops a running server from any thread.
#[derive(Clone)]
pub struct Control {
    node: Arc<Node>,
    hub: Arc<Hub<Step>>,
    stats: Arc<[ShardStats]>,
    /// The embedded broker (its history travels in a hand-over; a cluster's is in Redis).
    embedded: bool,
    /// `--history-bytes`.
    history_bytes: usize,
    /// `--h2-max-streams`.
    h2_max_streams: u32,
}

impl Control {
    /// Asks every shard to stop: stop accepting, flush what is queued, close, return.
    pub fn shutdown(&self) {
        self.node.stop.store(true, Ordering::Release);
        self.hub.wake_all();
    }

    /// Re-reads every key and certificate file (`SIGHUP`). What fails to load stays as it
    /// was; the outcome is one line per flag with files.
    pub fn reload(&self) -> Vec<Result<String, String>> {
        let mut outcomes: Vec<_> = self
            .node
            .keys
            .iter()
            .filter(|trust| trust.has_files())
            .map(|trust| {
                let flag = trust.flag();
                trust
                    .reload()
                    .map(|n| format!("{flag}: {n} keys loaded"))
                    .map_err(|e| format!("{flag}: keeping the keys in use: {e}"))
            })
            .collect();
        if let Some(certificate) = &self.node.tls {
            outcomes.push(
                certificate
                    .reload()
                    .map_err(|e| format!("keeping the TLS certificate in use: {e}")),
            );
        }
        outcomes
    }

    /// Hands every connection that can go on elsewhere to the new process at the other end
    /// of `channel`, which said `hello` (see [`crate::node::handover`]). On an error nothing was
    /// handed over and this process serves on as before.
    pub fn hand_over(&self, channel: &Channel, hello: &Hello) -> Result<Given, String> {
        handover::give(channel, hello, self)
    }

    /// The node's hub (ids, encode counts).
    pub fn hub(&self) -> &Hub<Step> {
        &self.hub
    }

    /// Streams open across the node.
    pub fn streams(&self) -> usize {
        self.node.quota.streams()
    }

    /// Every shard's counters, as last mirrored by its loop.
    pub fn stats(&self) -> &[ShardStats] {
        &self.stats
    }
}

/// The old process's steps of a hand-over, each told to every shard through its inbox.
impl Giver for Control {
    fn history_bytes(&self) -> u64 {
        if self.embedded {
            self.history_bytes as u64
        } else {
            0
        }
    }

    fn settle(&self) -> Result<(), String> {
        let (settled, replies) = mpsc::channel();
        self.hub.tell_shards(|_| Step::Settle(settled.clone()));
        for _ in 0..self.stats.len() {
            replies
                .recv_timeout(handover::SETTLE + handover::PATIENCE)
                .map_err(|_| "a shard did not settle its requests".to_owned())?;
        }
        Ok(())
    }

    fn freeze(&self) -> Snapshot {
        self.hub.freeze(self.embedded)
    }

    fn detach(&self) -> Result<Vec<Outgoing>, String> {
        let (detached, replies) = mpsc::channel();
        self.hub.tell_shards(|_| Step::Detach(detached.clone()));
        let mut outgoing = Vec::new();
        for _ in 0..self.stats.len() {
            let part = replies
                .recv_timeout(handover::PATIENCE)
                .map_err(|_| "a shard did not detach its connections".to_owned())?;
            outgoing.extend(part);
        }
        Ok(outgoing)
    }

    fn commit(&self) {
        self.hub.tell_shards(|_| Step::Commit);
    }

    fn abort(&self) {
        self.hub.thaw();
        self.hub.tell_shards(|_| Step::Abort);
    }
}

impl Server {
    /// Binds the listeners and sets up one shard per listener; nothing runs yet.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        // Keys first: a bad key file is a configuration error, found before any port is taken.
        let expect = Expect {
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
        };
        let subscribe_keys = trust("--subscribe-jwt", &config.subscribe_jwt, &expect)?;
        let publish_keys = trust("--publish-jwt", &config.publish_jwt, &expect)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(Certificate::load(cert, key, config.http2).map_err(StartError::Keys)?)
            }
            _ => None,
        };
        let listeners = match crate::node::upgrade::inherited_listeners() {
            // An upgrade: the old process's own listening sockets, so no connection is refused.
            Some(inherited) => {
                let inherited = inherited.map_err(StartError::Upgrade)?;
                if inherited.len() != config.shards {
                    return Err(StartError::Upgrade(format!(
                        "the old process had {} listeners and --shards is {}: keep the same --shards across an upgrade",
                        inherited.len(),
                        config.shards
                    )));
                }
                inherited
                    .into_iter()
                    .map(mio::net::TcpListener::from_std)
                    .collect()
            }
            None => listener::bind(config.listen, config.shards, config.reuse_port)?,
        };
        let listener_fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let local_addr = listeners[0].local_addr().map_err(StartError::Register)?;
        let mut polls = Vec::with_capacity(listeners.len());
        let mut wakers = Vec::with_capacity(listeners.len());
        for _ in 0..listeners.len() {
            let poll = Poll::new().map_err(StartError::Poll)?;
            wakers.push(Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(StartError::Waker)?,
            ));
            polls.push(poll);
        }
        let (hub, inboxes) = Hub::new(
            wakers,
            config.history,
            config.history_bytes,
            config.topic_bytes,
        );
        let stats: Arc<[ShardStats]> = (0..listeners.len())
            .map(|_| ShardStats::default())
            .collect();
        let max_streams = config.max_clients.unwrap_or_else(|| {
            let shards = listeners.len() as u64;
            let limit = fdlimit::soft_limit().unwrap_or(1024);
            let descriptors = limit.saturating_sub(FD_HEADROOM + 4 * shards).max(1);
            // Each descriptor may carry --h2-max-streams HTTP/2 streams.
            let per_connection = if config.http2 {
                u64::from(config.h2_max_streams)
            } else {
                1
            };
            descriptors.saturating_mul(per_connection).min(1 << 30) as usize
        });
        info!(max_streams, "streams beyond this are shed");
        if config.reuse_port && config.redis.is_none() {
            // Nothing ties processes on one port together but a shared Redis: the kernel
            // spreads connections over them, and each publish reaches one process's streams.
            warn!(
                "--reuse-port without --redis: a publish reaches only the streams of the process \
                 that received it; processes sharing a port must share a Redis (--redis)"
            );
        }
        let node = Arc::new(Node {
            stop: AtomicBool::new(false),
            quota: Quota::new(max_streams, config.max_streams_per_ip),
            access: Access {
                publish: PublishAccess::new(
                    config.publish_token.clone(),
                    publish_keys.clone(),
                    config.publish_allow.clone(),
                ),
                streams: StreamAccess::new(subscribe_keys.clone(), config.token_in_query),
            },
            cors: Cors::new(&config.cors_origins),
            pages: crate::node::shard::pages(config.token_in_query),
            keys: [subscribe_keys, publish_keys]
                .into_iter()
                .flatten()
                .collect(),
            tls,
        });
        let config = Arc::new(config);
        let broker = match &config.redis {
            None => Broker::Local,
            Some(url) => {
                // Validated with the rest of the configuration; a bad URL never gets here.
                let info = crate::broker::redis::parse_url(url).map_err(StartError::Redis)?;
                // One heartbeat for the cluster, not one per node (the shards do not tick).
                let ticker = config.tick_period().map(|period| Ticker {
                    period,
                    holder: node_name(listener_fds[0]),
                });
                let cluster = Cluster::start(
                    hub.clone(),
                    info,
                    config.redis_stream.clone(),
                    config.redis_maxlen,
                    crate::broker::replay::Limits {
                        scan: config.replay_scan,
                        cache_bytes: config.replay_cache_bytes,
                    },
                    ticker,
                )
                .map_err(StartError::Thread)?;
                Broker::Redis(cluster)
            }
        };
        let broker = Arc::new(broker);
        let mut shards = Vec::with_capacity(listeners.len());
        for (id, ((poll, listener), inbox)) in
            polls.into_iter().zip(listeners).zip(inboxes).enumerate()
        {
            let shard = Shard::new(ShardParts {
                id,
                poll,
                listener,
                inbox,
                hub: hub.clone(),
                broker: broker.clone(),
                config: config.clone(),
                stats: stats.clone(),
                node: node.clone(),
            })
            .map_err(StartError::Register)?;
            shards.push(shard);
        }
        Ok(Server {
            shards,
            local_addr,
            listener_fds,
            control: Control {
                node,
                hub,
                stats,
                embedded: config.redis.is_none(),
                history_bytes: config.history_bytes,
                h2_max_streams: config.h2_max_streams,
            },
        })
    }

    /// Takes what the node's previous process handed over: its ids and history, and its
    /// connections, each for the shard it was on (or one of ours, with fewer shards). They
    /// are installed when the shards start.
    pub fn take_over(&mut self, taken: Taken) {
        let epoch = taken.state.epoch.clone();
        let state = &taken.state;
        // The ids go on from the old process's only when it sent its history (the embedded
        // broker's); a cluster node's come from Redis.
        let last_id = state.history.is_some().then_some(state.last_id);
        self.control.hub.take_over(last_id, state.heartbeats);
        let shards = self.shards.len().max(1);
        for (record, fd) in taken.connections {
            let i = usize::from(record.shard) % shards;
            if let Some(shard) = self.shards.get_mut(i) {
                shard.adopt_later(epoch.clone(), record, fd);
            }
        }
    }

    /// What this process can take from a previous one in a hand-over: its own flags'
    /// bounds.
    pub fn handover_limits(&self) -> Limits {
        let control = &self.control;
        Limits {
            history_bytes: if control.embedded {
                control.history_bytes
            } else {
                0
            },
            max_streams: control.node.quota.max_streams(),
            h2_max_streams: control.h2_max_streams,
            // Unreadable, the limit is taken as the kernel's default ceiling (nr_open).
            max_connections: fdlimit::soft_limit()
                .map_or(1 << 20, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// Keeps one part of a previous process's history (before the shards run), under this
    /// process's own budget.
    pub fn import_history(&self, part: HistoryImage) {
        self.control.hub.import_history(part);
    }

    /// The listening sockets, for an upgrade to inherit (they stay open while the shards run).
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.listener_fds.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to stop the server.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs every shard, shard 0 on the calling thread, until [`Control::shutdown`] and the
    /// drain are over.
    ///
    /// A shard that panics or whose event loop fails ends the process (see [`guard`]):
    /// a node that silently lost a shard would hold streams nobody serves.
    pub fn run(self) -> io::Result<()> {
        guard::install_hook();
        info!(
            shards = self.shards.len(),
            "listening on {}", self.local_addr
        );
        let mut shards = self.shards.into_iter();
        let Some(first) = shards.next() else {
            return Ok(());
        };
        let threads: Vec<_> = shards
            .enumerate()
            .map(|(i, shard)| {
                let id = i + 1;
                thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || guard::run_shard(id, || shard.run()))
            })
            .collect::<io::Result<_>>()?;
        guard::run_shard(0, || first.run());
        for thread in threads {
            // run_shard returns only after a normal stop; a panic there already exited.
            let _ = thread.join();
        }
        Ok(())
    }
}

/// This node's name among the cluster's: the host, and the identity of its first listening
/// socket, which is this process's alone among nodes sharing a port and goes over to the
/// process that takes the listeners in an upgrade.
fn node_name(listener: RawFd) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    // SAFETY: fstat only writes into the zeroed struct it is given; the fd is a listener
    // this process holds open.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let socket = if unsafe { libc::fstat(listener, &mut stat) } == 0 {
        format!("socket:{}", stat.st_ino)
    } else {
        format!("pid:{}", std::process::id())
    };
    format!("{host}/{socket}")
}

/// The keys behind one flag, when it is given.
fn trust(
    flag: &'static str,
    sources: &[KeySource],
    expect: &Expect,
) -> Result<Option<Arc<Trust>>, StartError> {
    if sources.is_empty() {
        return Ok(None);
    }
    Trust::load(flag, sources.to_vec(), expect.clone())
        .map(|trust| Some(Arc::new(trust)))
        .map_err(|e| StartError::Keys(format!("{flag}: {e}")))
}
