//! Who may publish: a bearer token when one is configured, else peers on an allow-list
//! (loopback by default). Subscribing is always open. Pure.

use std::net::IpAddr;
use std::str::FromStr;

use crate::http::Rejection;

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `ADDR/PREFIX` or a bare address (a single host).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or ADDR/PREFIX network");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 peers count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The publish policy.
#[derive(Debug, Clone)]
pub struct PublishAccess {
    token: Option<String>,
    allow: Vec<Cidr>,
}

impl PublishAccess {
    /// With a token, every publisher must present it; without, only `allow` peers may publish.
    pub fn new(token: Option<String>, allow: Vec<Cidr>) -> PublishAccess {
        PublishAccess { token, allow }
    }

    /// Decides one publish request from `peer` carrying `authorization`.
    pub fn check(&self, authorization: Option<&str>, peer: IpAddr) -> Result<(), Rejection> {
        let Some(token) = &self.token else {
            if self.allow.iter().any(|net| net.contains(peer)) {
                return Ok(());
            }
            return Err(Rejection {
                status: 403,
                reason: "publishing is not allowed from this address (see --publish-allow and --publish-token)",
            });
        };
        let presented = authorization.and_then(|h| {
            let (scheme, value) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        });
        match presented {
            None => Err(Rejection {
                status: 401,
                reason: "publishing needs an Authorization: Bearer token",
            }),
            Some(value) if constant_time_eq(value.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Rejection {
                status: 403,
                reason: "wrong publish token",
            }),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths, so a wrong token
/// does not reveal how much of it was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn loopback() -> Vec<Cidr> {
        vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("::1".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert!(!"::1".parse::<Cidr>().unwrap().contains(ip("127.0.0.1")));
        // An IPv4 peer seen through a dual-stack socket.
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_token_only_allowed_peers_publish() {
        let access = PublishAccess::new(None, loopback());
        assert!(access.check(None, ip("127.0.0.1")).is_ok());
        assert!(access.check(None, ip("127.9.9.9")).is_ok());
        assert!(access.check(None, ip("::1")).is_ok());
        assert_eq!(access.check(None, ip("192.0.2.7")).unwrap_err().status, 403);
    }

    #[test]
    fn with_a_token_everyone_needs_it_and_the_scheme_is_case_insensitive() {
        let access = PublishAccess::new(Some("s3cret".into()), loopback());
        assert_eq!(access.check(None, ip("127.0.0.1")).unwrap_err().status, 401);
        assert_eq!(
            access
                .check(Some("Basic abc"), ip("127.0.0.1"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            access
                .check(Some("Bearer nope"), ip("127.0.0.1"))
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            access
                .check(Some("Bearer s3cre"), ip("127.0.0.1"))
                .unwrap_err()
                .status,
            403
        );
        assert!(access.check(Some("Bearer s3cret"), ip("192.0.2.7")).is_ok());
        assert!(access
            .check(Some("bearer  s3cret"), ip("127.0.0.1"))
            .is_ok());
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
