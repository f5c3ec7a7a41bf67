//! Who may publish: a bearer token when one is configured, else peers on an allow-list
//! (loopback by default). Subscribing is always open. Pure.
//!
//! # Why the allow-list looks at browser and proxy headers
//!
//! The allow-list trusts the peer address. Two kinds of request borrow a trusted address:
//!
//! - one relayed by a proxy on an allowed host: the peer is the proxy, the real client is
//!   unknown. `Forwarded`, `X-Forwarded-For` or `Via` mark it; refused.
//! - one made by a browser on an allowed host, on behalf of whatever page it shows. A page
//!   from another site gives itself away by `Sec-Fetch-Site: cross-site` or by its `Origin`.
//!   DNS rebinding is the subtle case: a page at `http://evil.example:8080` whose name was
//!   rebound to 127.0.0.1 sends `Host: evil.example:8080` *and* a matching
//!   `Origin: http://evil.example:8080`, so "Origin matches Host" proves nothing when Host
//!   is a DNS name. Only a name that cannot be rebound proves it: an IP literal, or
//!   `localhost`. So a publish that carries an `Origin` is accepted only when its `Host` is
//!   one of those and the Origin is exactly `http://` + that Host (the page this server
//!   serves at `http://localhost:8080` or `http://127.0.0.1:8080` publishes that way). A
//!   browser page served under a DNS name must use `--publish-token`.
//!
//! Clients that are not browsers (curl, scripts) send no `Origin` and are judged by their
//! address alone. With a token configured none of this applies: the token is the proof.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::http::{Head, Rejection};

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

    /// Decides one publish request from `peer`, from its head.
    pub fn check(&self, head: &Head, peer: IpAddr) -> Result<(), Rejection> {
        let Some(token) = &self.token else {
            if !self.allow.iter().any(|net| net.contains(peer)) {
                return Err(forbidden(
                    "publishing is not allowed from this address (see --publish-allow and --publish-token)",
                ));
            }
            return borrowed_address(head).map_or(Ok(()), Err);
        };
        let presented = head.authorization.as_deref().and_then(|h| {
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

const fn forbidden(reason: &'static str) -> Rejection {
    Rejection {
        status: 403,
        reason,
    }
}

/// Why a request from an allowed address may not speak for that address (see the module
/// documentation), if it may not.
fn borrowed_address(head: &Head) -> Option<Rejection> {
    if head.proxied {
        return Some(forbidden(
            "behind a proxy the real peer is unknown: use --publish-token",
        ));
    }
    let cross_site = head.sec_fetch_site.as_deref();
    if cross_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Some(forbidden(
            "a cross-site page may not publish: use --publish-token",
        ));
    }
    let origin = head.origin.as_deref()?;
    let same_origin = head.host.as_deref().is_some_and(|host| {
        is_unrebindable(host)
            && origin
                .strip_prefix("http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
    });
    if same_origin {
        return None;
    }
    Some(forbidden(
        "a page may publish only from http://<Host> with Host an IP address or localhost: use --publish-token",
    ))
}

/// Whether a `Host` value names this machine in a way DNS cannot rebind: an IP literal
/// (IPv6 in brackets) or `localhost`, each with an optional port.
fn is_unrebindable(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => (v6.parse::<Ipv6Addr>().is_ok(), after),
            None => return false,
        },
        None => {
            let (name, after) = host.find(':').map_or((host, ""), |at| host.split_at(at));
            let ok = name.parse::<Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost");
            (ok, after)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
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
    use crate::http::{RequestParser, Step};

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

    /// The head of a publish carrying `lines` (each ending in CRLF).
    fn head(lines: &str) -> Head {
        let mut parser = RequestParser::default();
        parser.feed(format!("POST /broadcast HTTP/1.1\r\n{lines}\r\n").as_bytes());
        assert_eq!(parser.advance(1024), Ok(Step::Head));
        parser.head().cloned().unwrap()
    }

    fn auth(value: &str) -> Head {
        head(&format!("Authorization: {value}\r\n"))
    }

    #[test]
    fn without_a_token_only_allowed_peers_publish() {
        let access = PublishAccess::new(None, loopback());
        assert!(access.check(&head(""), ip("127.0.0.1")).is_ok());
        assert!(access.check(&head(""), ip("127.9.9.9")).is_ok());
        assert!(access.check(&head(""), ip("::1")).is_ok());
        let err = access.check(&head(""), ip("192.0.2.7")).unwrap_err();
        assert_eq!(err.status, 403);
    }

    #[test]
    fn with_a_token_everyone_needs_it_and_the_scheme_is_case_insensitive() {
        let access = PublishAccess::new(Some("s3cret".into()), loopback());
        let local = ip("127.0.0.1");
        assert_eq!(access.check(&head(""), local).unwrap_err().status, 401);
        assert_eq!(
            access.check(&auth("Basic abc"), local).unwrap_err().status,
            401
        );
        assert_eq!(
            access
                .check(&auth("Bearer nope"), local)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            access
                .check(&auth("Bearer s3cre"), local)
                .unwrap_err()
                .status,
            403
        );
        assert!(access
            .check(&auth("Bearer s3cret"), ip("192.0.2.7"))
            .is_ok());
        assert!(access.check(&auth("bearer  s3cret"), local).is_ok());
        // The token is the proof: browser and proxy headers do not matter then.
        let proxied = head("Authorization: Bearer s3cret\r\nX-Forwarded-For: 1.2.3.4\r\nOrigin: https://a.example\r\nSec-Fetch-Site: cross-site\r\n");
        assert!(access.check(&proxied, local).is_ok());
    }

    #[test]
    fn allowed_addresses_do_not_vouch_for_proxies_or_other_pages() {
        let access = PublishAccess::new(None, loopback());
        let local = ip("127.0.0.1");
        let refused = [
            "Forwarded: for=192.0.2.1\r\n",
            "X-Forwarded-For: 192.0.2.1\r\n",
            "Via: 1.1 proxy\r\n",
            "Sec-Fetch-Site: cross-site\r\n",
            "Host: localhost:8080\r\nOrigin: https://evil.example\r\n",
            "Host: localhost:8080\r\nOrigin: http://localhost:8081\r\n",
            "Host: localhost:8080\r\nOrigin: null\r\n",
            "Origin: http://localhost:8080\r\n",
            // DNS rebinding: a foreign name in both Host and Origin.
            "Host: evil.example:8080\r\nOrigin: http://evil.example:8080\r\n",
            "Host: evil.example\r\nOrigin: https://evil.example\r\n",
            "Host: 127.0.0.1.evil.example\r\nOrigin: http://127.0.0.1.evil.example\r\n",
            "Host: [::1\r\nOrigin: http://[::1\r\n",
            "Host: localhost:80x\r\nOrigin: http://localhost:80x\r\n",
        ];
        for lines in refused {
            let err = access.check(&head(lines), local).unwrap_err();
            assert_eq!(err.status, 403, "{lines:?}");
        }
        let proxy = access.check(&head("Via: 1.1 p\r\n"), local).unwrap_err();
        assert!(proxy.reason.contains("use --publish-token"));
        let accepted = [
            "Host: localhost:8080\r\nOrigin: http://localhost:8080\r\nSec-Fetch-Site: same-origin\r\n",
            "Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\n",
            "Host: [::1]:8080\r\nOrigin: http://[::1]:8080\r\n",
            "Host: LOCALHOST\r\nOrigin: http://localhost\r\n",
            "Host: 10.0.0.5\r\nOrigin: http://10.0.0.5\r\n",
            "Host: anything.example\r\n",
            "Sec-Fetch-Site: same-site\r\n",
            "Sec-Fetch-Site: none\r\n",
        ];
        for lines in accepted {
            assert_eq!(access.check(&head(lines), local), Ok(()), "{lines:?}");
        }
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
