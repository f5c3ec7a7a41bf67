//! The `http://host:port/path?query` URLs the load generator speaks to (no TLS: put a
//! terminating proxy in front of a TLS-only server, or run next to it).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed and resolved `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The `Host` header value, as written in the URL (with the port when one was given).
    pub host_header: String,
    /// The path and query sent in the request line, at least `/`.
    pub target: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
}

impl Url {
    /// Parses and resolves `text`.
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("{text:?}: only http:// URLs are supported"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{text:?}: expected http://HOST[:PORT]/PATH"));
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_owned()
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{text:?}: cannot resolve {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{text:?}: {authority:?} has no address"))?;
        Ok(Url {
            host_header: authority.to_owned(),
            target,
            addr,
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.host_header, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_shapes() {
        let u = Url::parse("http://127.0.0.1:8080/stream?topic=a").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (u.host_header.as_str(), u.target.as_str()),
            ("127.0.0.1:8080", "/stream?topic=a")
        );
        let u = Url::parse("http://127.0.0.2").unwrap();
        assert_eq!((u.addr.port(), u.target.as_str()), (80, "/"));
        assert_eq!(
            Url::parse("http://[::1]:9/x?y").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            Url::parse("http://127.0.0.1:1?q=1").unwrap().target,
            "/?q=1"
        );
        assert!(Url::parse("https://127.0.0.1/").is_err());
        assert!(Url::parse("http:///x").is_err());
    }
}
