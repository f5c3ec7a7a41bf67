//! Listening sockets, set up with socket2: reuse-address, optional reuse-port, large backlog,
//! non-blocking.
//!
//! Several shards each get their own listener on the same address with `SO_REUSEPORT`, and
//! the kernel spreads new connections over them. `SO_REUSEPORT` would also let an unrelated
//! process (or a second sse-edge) join the port silently, so unless the operator asked for
//! sharing with `--reuse-port`, the address is first probed with a plain bind: if anyone
//! holds it, that is an error, however many shards there are.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Requested accept backlog; the kernel caps it at `net.core.somaxconn`. A reconnect storm
/// waits in this queue (complete connections the node has not accepted yet): beyond it, the
/// kernel drops new SYNs and their clients retry after 1 s, 3 s, 7 s, ...
pub const BACKLOG: i32 = 65_535;

/// How many connections one listener's accept queue holds: [`BACKLOG`], or less where the
/// kernel's `net.core.somaxconn` is lower (None when it cannot be read).
pub fn accept_queue() -> Option<u32> {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?;
    let somaxconn: u32 = somaxconn.trim().parse().ok()?;
    Some(somaxconn.min(BACKLOG as u32))
}

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Someone else holds the address and sharing was not asked for.
    #[error("address {addr} is already in use (pass --reuse-port to share it deliberately with other sse-edge processes)")]
    InUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Any other failure, with the call that failed.
    #[error("cannot listen on {addr}: {call}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The failing call.
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Binds `count` listeners on `addr` (all on the same port when `addr` has port 0).
///
/// With `count > 1` or `share`, every socket sets `SO_REUSEPORT`; without `share` the port
/// must be free of other owners first.
pub fn bind(addr: SocketAddr, count: usize, share: bool) -> Result<Vec<TcpListener>, ListenError> {
    let reuse_port = share || count > 1;
    let mut addr = addr;
    if reuse_port && !share {
        // A plain bind fails if anyone holds the port, reuse-port or not; it also fixes
        // the port when `addr` asks for any port.
        let probe = socket(addr, false)?;
        bind_one(&probe, addr)?;
        addr = local_addr(&probe, addr)?;
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let s = socket(addr, reuse_port)?;
        bind_one(&s, addr)?;
        // The first bind fixes the port for the others when port 0 was asked for.
        addr = local_addr(&s, addr)?;
        s.listen(BACKLOG).map_err(|source| ListenError::Io {
            addr,
            call: "listen",
            source,
        })?;
        listeners.push(TcpListener::from_std(s.into()));
    }
    Ok(listeners)
}

fn socket(addr: SocketAddr, reuse_port: bool) -> Result<Socket, ListenError> {
    let io = |call| move |source| ListenError::Io { addr, call, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io("socket"))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    s.set_reuse_address(true)
        .map_err(io("setsockopt(SO_REUSEADDR)"))?;
    if reuse_port {
        s.set_reuse_port(true)
            .map_err(io("setsockopt(SO_REUSEPORT)"))?;
    }
    s.set_nonblocking(true).map_err(io("fcntl(O_NONBLOCK)"))?;
    Ok(s)
}

fn bind_one(s: &Socket, addr: SocketAddr) -> Result<(), ListenError> {
    s.bind(&addr.into()).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            ListenError::InUse { addr }
        } else {
            ListenError::Io {
                addr,
                call: "bind",
                source,
            }
        }
    })
}

fn local_addr(s: &Socket, addr: SocketAddr) -> Result<SocketAddr, ListenError> {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| ListenError::Io {
            addr,
            call: "getsockname",
            source: io::Error::other("no socket address"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn the_accept_queue_is_what_the_kernel_allows_of_what_is_asked() {
        let queue = accept_queue().expect("/proc/sys/net/core/somaxconn");
        assert!((1..=BACKLOG as u32).contains(&queue));
    }

    #[test]
    fn shards_share_one_port() {
        let ls = bind(any_port(), 3, false).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_held_port_is_an_error_without_share() {
        let held = bind(any_port(), 1, false).unwrap();
        let addr = held[0].local_addr().unwrap();
        assert!(matches!(
            bind(addr, 1, false),
            Err(ListenError::InUse { .. })
        ));
        assert!(matches!(
            bind(addr, 2, false),
            Err(ListenError::InUse { .. })
        ));
        // Sharing needs every owner to agree: the holder did not set SO_REUSEPORT.
        assert!(matches!(
            bind(addr, 1, true),
            Err(ListenError::InUse { .. })
        ));
    }

    #[test]
    fn sharing_processes_agree_and_others_are_refused() {
        let first = bind(any_port(), 2, true).unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(bind(addr, 2, true).unwrap().len(), 2);
        // A multi-shard node that did not ask to share must not join silently.
        assert!(matches!(
            bind(addr, 2, false),
            Err(ListenError::InUse { .. })
        ));
    }
}
