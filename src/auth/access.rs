//! Who may publish, and who may hold a stream. Pure.
//!
//! Publishing needs a bearer token when one is configured (`--publish-token`, or a JWT with
//! `--publish-jwt`), else a peer on an allow-list (loopback by default). A stream is open to
//! anyone unless `--subscribe-jwt` is set; then it needs a token ([`crate::auth::jwt`]) that grants
//! every topic it asks for, from the `Authorization` header, the `sse_edge_token` cookie,
//! or (with `--token-in-query`) the `access_token` query parameter.
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
//!   one of those and the Origin is exactly the connection's scheme (`http://`, or
//!   `https://` on a TLS listener) + that Host (the page this server serves at
//!   `http://localhost:8080` or `http://127.0.0.1:8080` publishes that way). A
//!   browser page served under a DNS name must use `--publish-token`.
//!
//! Clients that are not browsers (curl, scripts) send no `Origin` and are judged by their
//! address alone. With a token configured none of this applies: the token is the proof.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use crate::auth::jwt::{Grants, Refusal, Trust};
use crate::wire::http::{query_pairs, Head, Rejection, Route};
use crate::wire::params;

/// The cookie a stream's token may come in (set by the app, HttpOnly).
pub const TOKEN_COOKIE: &str = "sse_edge_token";

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
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 peers count as IPv4, and an IPv6
    /// network written with a mapped address (`::ffff:10.0.0.0/104`) holds those IPv4 peers.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip.to_canonical()) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        match (self.addr, ip) {
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

/// A node's whole policy: who may publish, who may hold a stream.
#[derive(Debug, Clone)]
pub struct Access {
    /// Who may publish, and to what.
    pub publish: PublishAccess,
    /// Who may hold a stream, and of what.
    pub streams: StreamAccess,
}

/// The publish policy.
#[derive(Debug, Clone)]
pub struct PublishAccess {
    token: Option<String>,
    jwt: Option<Arc<Trust>>,
    allow: Vec<Cidr>,
}

/// What a publisher was found to be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishGrant {
    /// Any topic: the static token, or an allowed address.
    AnyTopic,
    /// The topics its JWT grants.
    Topics(Grants),
}

impl PublishGrant {
    /// Whether publishing to `topic` is allowed.
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            PublishGrant::AnyTopic => true,
            PublishGrant::Topics(grants) => grants.allows(topic),
        }
    }
}

impl PublishAccess {
    /// With a static token or JWT keys, every publisher must present one; with neither, only
    /// `allow` peers may publish.
    pub fn new(token: Option<String>, jwt: Option<Arc<Trust>>, allow: Vec<Cidr>) -> PublishAccess {
        PublishAccess { token, jwt, allow }
    }

    /// Decides one publish request from `peer`, from its head, at unix time `now`; `secure`
    /// says it came over TLS (so a same-origin page's `Origin` is `https://` + Host).
    ///
    /// A static token keeps its answers (missing 401, wrong 403); a JWT that does not pass is
    /// 401 with the reason.
    pub fn check(
        &self,
        head: &Head,
        peer: IpAddr,
        now: u64,
        secure: bool,
    ) -> Result<PublishGrant, Rejection> {
        if self.token.is_none() && self.jwt.is_none() {
            if !self.allow.iter().any(|net| net.contains(peer)) {
                return Err(forbidden(
                    "publishing is not allowed from this address (see --publish-allow and --publish-token)",
                ));
            }
            return borrowed_address(head, secure).map_or(Ok(PublishGrant::AnyTopic), Err);
        }
        let Some(presented) = bearer(head) else {
            return Err(unauthorized(
                "publishing needs an Authorization: Bearer token",
            ));
        };
        if let Some(token) = &self.token {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Ok(PublishGrant::AnyTopic);
            }
        }
        match &self.jwt {
            // Beside a static token, only what looks like a JWT is judged as one.
            Some(trust) if self.token.is_none() || presented.matches('.').count() == 2 => trust
                .verify(presented, now)
                .map(|token| PublishGrant::Topics(token.publish))
                .map_err(|refusal| unauthorized(refusal.reason())),
            _ => Err(forbidden("wrong publish token")),
        }
    }
}

/// Who may hold a stream.
#[derive(Debug, Clone, Default)]
pub struct StreamAccess {
    jwt: Option<Arc<Trust>>,
    token_in_query: bool,
}

/// What a stream request was found to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamGrant {
    /// No token needed (`--subscribe-jwt` is not set).
    Open,
    /// A token that grants the topics, valid until this unix time (seconds).
    Until(u64),
    /// A correctly signed token that expired at this unix time: the stream is told so and
    /// closed, so that the browser retries (with a refreshed cookie) instead of giving up.
    Expired(u64),
}

impl StreamAccess {
    /// Open to all without keys; with them, every stream needs a token.
    pub fn new(jwt: Option<Arc<Trust>>, token_in_query: bool) -> StreamAccess {
        StreamAccess {
            jwt,
            token_in_query,
        }
    }

    /// Decides a stream request for `topics` from its head, at unix time `now`: no token, or
    /// one that does not pass, is 401; a topic the token does not grant, 403.
    pub fn check(
        &self,
        head: &Head,
        topics: &[String],
        now: u64,
    ) -> Result<StreamGrant, Rejection> {
        let Some(trust) = &self.jwt else {
            return Ok(StreamGrant::Open);
        };
        let presented = self.presented(head)?;
        match trust.verify(&presented, now) {
            Ok(token) if topics.iter().all(|t| token.subscribe.allows(t)) => {
                Ok(StreamGrant::Until(token.exp))
            }
            Ok(_) => Err(forbidden("the token does not grant every topic asked for")),
            Err(Refusal::Expired(token)) => Ok(StreamGrant::Expired(token.exp)),
            Err(refusal) => Err(unauthorized(refusal.reason())),
        }
    }

    /// The stream's token: the bearer header, else the cookie, else (when allowed) the query.
    fn presented<'h>(&self, head: &'h Head) -> Result<Cow<'h, str>, Rejection> {
        if let Some(token) = bearer(head) {
            return Ok(Cow::Borrowed(token));
        }
        if let Some(token) = head.cookie.as_deref().and_then(token_cookie) {
            return Ok(Cow::Borrowed(token));
        }
        let in_query = query_pairs(&head.query)
            .filter_map(Result::ok)
            .find(|(key, _)| key == "access_token")
            .map(|(_, value)| value);
        match in_query {
            Some(token) if self.token_in_query => Ok(Cow::Owned(token)),
            Some(_) => Err(unauthorized(
                "a token in the URL is accepted only with --token-in-query; send it as a cookie or header",
            )),
            None => Err(unauthorized(
                "this stream needs a token: Authorization: Bearer, or the sse_edge_token cookie",
            )),
        }
    }
}

/// The value of an `Authorization: Bearer` header.
fn bearer(head: &Head) -> Option<&str> {
    let (scheme, value) = head.authorization.as_deref()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
}

/// The token cookie's value in a `Cookie` header, if it is there and not empty.
fn token_cookie(cookies: &str) -> Option<&str> {
    cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

const fn unauthorized(reason: &'static str) -> Rejection {
    Rejection {
        status: 401,
        reason,
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
fn borrowed_address(head: &Head, secure: bool) -> Option<Rejection> {
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
                .strip_prefix(if secure { "https://" } else { "http://" })
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

/// Judges a request from its head alone, before any body is read: a publish must be allowed
/// ([`PublishAccess::check`]) and name a valid topic and
/// event that its grant covers; a stream must name valid topics, and be allowed them
/// ([`StreamAccess::check`]), which is the grant returned.
/// `route` is the head's route; 404 and 405 are the caller's (they carry headers). `peer` is
/// needed for a publish only; a publish from an unknown peer is refused. `now` is unix time
/// in seconds, for tokens; `secure` says the connection is TLS.
///
/// Pure, so the shard runs it where a panic costs only this connection.
pub fn check_head(
    route: Route,
    head: &Head,
    access: &Access,
    peer: Option<IpAddr>,
    now: u64,
    secure: bool,
) -> Result<Option<StreamGrant>, Rejection> {
    match route {
        Route::Broadcast => {
            let peer = peer.ok_or(Rejection {
                status: 403,
                reason: "the peer's address is unknown",
            })?;
            let grant = access.publish.check(head, peer, now, secure)?;
            let (topic, _) = params::publish_target(&head.query)?;
            if !grant.allows(&topic) {
                return Err(Rejection {
                    status: 403,
                    reason: "the token does not grant publishing to this topic",
                });
            }
            Ok(None)
        }
        Route::Stream => {
            let subscribe = params::subscribe_from(&head.query, head.last_event_id.as_deref())?;
            access.streams.check(head, &subscribe.topics, now).map(Some)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{RequestParser, Step};

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
        // IPv4-mapped networks hold IPv4 peers, however the peer's address is written.
        let mapped: Cidr = "::ffff:10.1.0.0/112".parse().unwrap();
        for peer in ["10.1.2.3", "::ffff:10.1.2.3"] {
            assert!(mapped.contains(ip(peer)), "{peer}");
        }
        assert!(!mapped.contains(ip("10.2.0.1")));
        assert!(!mapped.contains(ip("2001:db8::1")));
        assert!("::ffff:127.0.0.1"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("127.0.0.1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("192.0.2.1")));
        assert!(!"2001:db8::/32"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("192.0.2.1")));
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
        let access = PublishAccess::new(None, None, loopback());
        assert!(access.check(&head(""), ip("127.0.0.1"), 0, false).is_ok());
        assert!(access.check(&head(""), ip("127.9.9.9"), 0, false).is_ok());
        assert!(access.check(&head(""), ip("::1"), 0, false).is_ok());
        let err = access
            .check(&head(""), ip("192.0.2.7"), 0, false)
            .unwrap_err();
        assert_eq!(err.status, 403);
    }

    #[test]
    fn with_a_token_everyone_needs_it_and_the_scheme_is_case_insensitive() {
        let access = PublishAccess::new(Some("s3cret".into()), None, loopback());
        let local = ip("127.0.0.1");
        assert_eq!(
            access.check(&head(""), local, 0, false).unwrap_err().status,
            401
        );
        assert_eq!(
            access
                .check(&auth("Basic abc"), local, 0, false)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            access
                .check(&auth("Bearer nope"), local, 0, false)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            access
                .check(&auth("Bearer s3cre"), local, 0, false)
                .unwrap_err()
                .status,
            403
        );
        assert!(access
            .check(&auth("Bearer s3cret"), ip("192.0.2.7"), 0, false)
            .is_ok());
        assert!(access
            .check(&auth("bearer  s3cret"), local, 0, false)
            .is_ok());
        // The token is the proof: browser and proxy headers do not matter then.
        let proxied = head("Authorization: Bearer s3cret\r\nX-Forwarded-For: 1.2.3.4\r\nOrigin: https://a.example\r\nSec-Fetch-Site: cross-site\r\n");
        assert!(access.check(&proxied, local, 0, false).is_ok());
    }

    #[test]
    fn allowed_addresses_do_not_vouch_for_proxies_or_other_pages() {
        let access = PublishAccess::new(None, None, loopback());
        let local = ip("127.0.0.1");
        let refused = [
            "Forwarded: for=192.0.2.1\r\n",
            "X-Forwarded-For: 192.0.2.1\r\n",
            "Via: 1.1 proxy\r\n",
            // What common proxies and CDNs add instead of (or beside) X-Forwarded-For.
            "X-Real-IP: 192.0.2.1\r\n",
            "X-Forwarded-Host: app.example\r\n",
            "X-Forwarded-Proto: https\r\n",
            "x-forwarded-port: 443\r\n",
            "True-Client-IP: 192.0.2.1\r\n",
            "CF-Connecting-IP: 192.0.2.1\r\n",
            "X-Client-IP: 192.0.2.1\r\n",
            "Fastly-Client-IP: 192.0.2.1\r\n",
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
            let err = access.check(&head(lines), local, 0, false).unwrap_err();
            assert_eq!(err.status, 403, "{lines:?}");
        }
        let proxy = access
            .check(&head("Via: 1.1 p\r\n"), local, 0, false)
            .unwrap_err();
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
            assert_eq!(
                access.check(&head(lines), local, 0, false),
                Ok(PublishGrant::AnyTopic),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn jwt(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn keys(flag: &'static str) -> Option<Arc<Trust>> {
        Some(Arc::new(
            Trust::load(flag, vec![SECRET.parse().unwrap()], Default::default()).unwrap(),
        ))
    }

    fn stream_head(query: &str, lines: &str) -> Head {
        let mut parser = RequestParser::default();
        parser.feed(format!("GET /stream?{query} HTTP/1.1\r\n{lines}\r\n").as_bytes());
        assert_eq!(parser.advance(1024), Ok(Step::Head));
        parser.head().cloned().unwrap()
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn streams_are_open_without_keys() {
        let access = StreamAccess::default();
        let head = stream_head("topic=x", "");
        assert_eq!(
            access.check(&head, &topics(&["x"]), NOW),
            Ok(StreamGrant::Open)
        );
    }

    #[test]
    fn stream_token_sources_in_order() {
        let good = jwt(serde_json::json!({"exp": NOW + 60, "sse_edge": {"subscribe": ["news"]}}));
        let bad = "not.a.jwt";
        let strict = StreamAccess::new(keys("--subscribe-jwt"), false);
        let lenient = StreamAccess::new(keys("--subscribe-jwt"), true);
        let news = topics(&["news"]);
        let until = Ok(StreamGrant::Until(NOW + 60));
        let header = stream_head("", &format!("Authorization: Bearer {good}\r\n"));
        assert_eq!(strict.check(&header, &news, NOW), until);
        let cookie = stream_head(
            "",
            &format!("Cookie: theme=dark; sse_edge_token={good}; x=y\r\n"),
        );
        assert_eq!(strict.check(&cookie, &news, NOW), until);
        // The header wins over the cookie.
        let both = stream_head(
            "",
            &format!("Authorization: Bearer {bad}\r\nCookie: sse_edge_token={good}\r\n"),
        );
        assert_eq!(strict.check(&both, &news, NOW).unwrap_err().status, 401);
        // A non-Bearer Authorization (a proxy's Basic) does not hide the cookie.
        let basic = stream_head(
            "",
            &format!("Authorization: Basic abc\r\nCookie: sse_edge_token={good}\r\n"),
        );
        assert_eq!(strict.check(&basic, &news, NOW), until);
        let query = stream_head(&format!("topic=news&access_token={good}"), "");
        assert_eq!(lenient.check(&query, &news, NOW), until);
        let refused = strict.check(&query, &news, NOW).unwrap_err();
        assert_eq!(refused.status, 401);
        assert!(refused.reason.contains("--token-in-query"));
        let none = strict.check(&stream_head("", "Cookie: other=1\r\n"), &news, NOW);
        assert_eq!(none.unwrap_err().status, 401);
        let empty = strict.check(&stream_head("", "Cookie: sse_edge_token=\r\n"), &news, NOW);
        assert_eq!(empty.unwrap_err().status, 401);
    }

    #[test]
    fn stream_topics_must_be_granted_and_expiry_is_not_a_401() {
        let access = StreamAccess::new(keys("--subscribe-jwt"), false);
        let token =
            jwt(serde_json::json!({"exp": NOW + 60, "sse_edge": {"subscribe": ["user/42/*"]}}));
        let head = stream_head("", &format!("Authorization: Bearer {token}\r\n"));
        assert!(access
            .check(&head, &topics(&["user/42/inbox", "user/42/x"]), NOW)
            .is_ok());
        let mixed = access.check(&head, &topics(&["user/42/inbox", "user/43/inbox"]), NOW);
        assert_eq!(mixed.unwrap_err().status, 403);
        assert_eq!(
            access.check(&head, &topics(&["user/42/inbox"]), NOW + 60),
            Ok(StreamGrant::Expired(NOW + 60))
        );
        let unsigned = stream_head("", "Authorization: Bearer a.b.c\r\n");
        let refused = access.check(&unsigned, &topics(&["x"]), NOW).unwrap_err();
        assert_eq!(
            (refused.status, refused.reason),
            (401, "the token is not a well-formed JWT")
        );
    }

    #[test]
    fn publish_with_a_jwt() {
        let access = PublishAccess::new(None, keys("--publish-jwt"), loopback());
        let local = ip("127.0.0.1");
        // Keys configured: the allow-list no longer lets anyone in without a token.
        assert_eq!(
            access
                .check(&head(""), local, NOW, false)
                .unwrap_err()
                .status,
            401
        );
        let token =
            jwt(serde_json::json!({"exp": NOW + 60, "sse_edge": {"publish": ["news", "feeds/*"]}}));
        let grant = access
            .check(
                &auth(&format!("Bearer {token}")),
                ip("192.0.2.7"),
                NOW,
                false,
            )
            .unwrap();
        assert!(grant.allows("news") && grant.allows("feeds/a") && !grant.allows("other"));
        let expired = access.check(&auth(&format!("Bearer {token}")), local, NOW + 60, false);
        assert_eq!(expired.unwrap_err(), unauthorized("the token has expired"));
        assert_eq!(
            access
                .check(&auth("Bearer junk"), local, NOW, false)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn publish_with_a_static_token_and_a_jwt() {
        let access = PublishAccess::new(Some("s3cret".into()), keys("--publish-jwt"), loopback());
        let local = ip("127.0.0.1");
        assert_eq!(
            access.check(&auth("Bearer s3cret"), local, NOW, false),
            Ok(PublishGrant::AnyTopic)
        );
        // The static token's answers stay: a wrong one is 403; a JWT that fails is 401.
        assert_eq!(
            access
                .check(&auth("Bearer nope"), local, NOW, false)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            access
                .check(&auth("Bearer a.b.c"), local, NOW, false)
                .unwrap_err()
                .status,
            401
        );
        let token = jwt(serde_json::json!({"exp": NOW + 60, "sse_edge": {"publish": ["news"]}}));
        assert!(access
            .check(&auth(&format!("Bearer {token}")), local, NOW, false)
            .is_ok());
    }

    #[test]
    fn a_page_served_over_tls_publishes_from_its_https_origin() {
        let access = PublishAccess::new(None, None, loopback());
        let local = ip("127.0.0.1");
        let https = head("Host: 127.0.0.1:8443\r\nOrigin: https://127.0.0.1:8443\r\n");
        let http = head("Host: 127.0.0.1:8443\r\nOrigin: http://127.0.0.1:8443\r\n");
        assert!(access.check(&https, local, 0, true).is_ok());
        assert!(access.check(&http, local, 0, false).is_ok());
        // The scheme must be the connection's: no page gets the other one's pass.
        assert_eq!(
            access.check(&https, local, 0, false).unwrap_err().status,
            403
        );
        assert_eq!(access.check(&http, local, 0, true).unwrap_err().status, 403);
    }
}
