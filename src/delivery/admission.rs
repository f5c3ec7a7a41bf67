//! Who gets a stream: the node's stream quota and the per-address quota. Shared by all
//! shards; taken once per stream opened or closed, never per event. (The topic budget is
//! the history's: [`crate::delivery::history::History::subscribe`].)
//!
//! A stream refused here is *shed* by the shard (200, `: shed`, a long `retry:`), not
//! answered with an error: a browser's `EventSource` gives up for good on any non-200.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The node's stream quotas.
#[derive(Debug)]
pub struct Quota {
    /// Streams open across the node.
    streams: AtomicUsize,
    /// Streams the node holds before it sheds new ones.
    max_streams: usize,
    /// Streams per client address, when limited.
    per_address: Option<PerAddress>,
}

#[derive(Debug)]
struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<u64, usize>>,
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `--max-clients` streams.
    NodeFull,
    /// The client's address holds `--max-streams-per-ip` streams.
    AddressFull,
    /// The topic budget (`--topic-bytes`) has no room for the stream's topics that no stream
    /// carries yet.
    TopicsFull,
    /// The node is draining (shutdown or upgrade): the stream should come back at once, to
    /// the node's successor or another node.
    Draining,
}

/// An admitted stream's claim, handed back to [`Quota::release`] when it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The address key counted, when addresses are limited.
    pub address: Option<u64>,
}

impl Quota {
    /// Quotas of `max_streams` per node and, when given, `per_address` per client address.
    pub fn new(max_streams: usize, per_address: Option<usize>) -> Quota {
        Quota {
            streams: AtomicUsize::new(0),
            max_streams,
            per_address: per_address.map(|limit| PerAddress {
                limit,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Streams open across the node.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// The node's stream limit.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Claims room for one stream from `peer`.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refusal> {
        let max = self.max_streams;
        self.streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::NodeFull)?;
        let Some(per) = &self.per_address else {
            return Ok(Admitted { address: None });
        };
        let key = address_key(peer);
        let mut open = per.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= per.limit {
            if *count == 0 {
                open.remove(&key);
            }
            drop(open);
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::AddressFull);
        }
        *count += 1;
        Ok(Admitted { address: Some(key) })
    }

    /// Gives back what [`Quota::admit`] claimed.
    pub fn release(&self, admitted: Admitted) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
        if let (Some(per), Some(key)) = (&self.per_address, admitted.address) {
            let mut open = per.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    // Forget the address, so a scan of many addresses leaves no trace.
                    open.remove(&key);
                }
            }
        }
    }
}

/// The key an address is counted under: an IPv4 address (also when IPv4-mapped), or the /64
/// an IPv6 address is in (one host usually holds a whole /64, so counting single addresses
/// would be no limit at all).
///
/// IPv4 keys live in `ff…` space, which as an IPv6 /64 is multicast and never a peer.
pub fn address_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => 0xFFFF_FFFF_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_node_quota_sheds_past_its_limit_and_recovers() {
        let q = Quota::new(2, None);
        let a = q.admit(ip("127.0.0.1")).unwrap();
        q.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(q.admit(ip("127.0.0.2")), Err(Refusal::NodeFull));
        q.release(a);
        assert!(q.admit(ip("127.0.0.2")).is_ok());
        assert_eq!(q.streams(), 2);
    }

    #[test]
    fn the_address_quota_counts_ipv6_per_64_and_forgets_empty_addresses() {
        let q = Quota::new(100, Some(2));
        let a = q.admit(ip("2001:db8::1")).unwrap();
        q.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(q.admit(ip("2001:db8::ffff")), Err(Refusal::AddressFull));
        assert!(q.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
        assert!(q.admit(ip("192.0.2.1")).is_ok());
        assert_eq!(q.streams(), 4, "a refused stream is not counted");
        q.release(a);
        assert!(q.admit(ip("2001:db8::3")).is_ok());
        let lone = q.admit(ip("192.0.2.9")).unwrap();
        q.release(lone);
        let open = q.per_address.as_ref().unwrap().open.lock().unwrap();
        assert!(!open.contains_key(&address_key(ip("192.0.2.9"))));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        assert_eq!(
            address_key(ip("::ffff:192.0.2.1")),
            address_key(ip("192.0.2.1"))
        );
        assert_ne!(address_key(ip("::1")), address_key(ip("0.0.0.1")));
    }
}
