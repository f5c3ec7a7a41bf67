//! The `http://`, `https://` and `h2c://` URLs the load generator speaks to:
//! `SCHEME://host[:port]/path?query`, resolved once at the start.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use rustls::pki_types::ServerName;

/// How a URL is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1, port 80 by default.
    Http,
    /// HTTP/1.1 over TLS ([`tls`](crate::tls)), port 443 by default; HTTP/2 by ALPN with
    /// `--streams-per-connection`.
    Https,
    /// HTTP/2 over plain TCP with prior knowledge ([`h2`](crate::h2)), port 80 by default.
    H2c,
}

impl Scheme {
    /// The scheme `text` starts with, and the rest; `None` for any other.
    pub fn split(text: &str) -> Option<(Scheme, &str)> {
        if let Some(rest) = text.strip_prefix("http://") {
            Some((Scheme::Http, rest))
        } else if let Some(rest) = text.strip_prefix("h2c://") {
            Some((Scheme::H2c, rest))
        } else {
            text.strip_prefix("https://")
                .map(|rest| (Scheme::Https, rest))
        }
    }

    /// The scheme of `text`, without resolving anything (for checking the command line).
    pub fn of(text: &str) -> Option<Scheme> {
        Scheme::split(text).map(|(scheme, _)| scheme)
    }

    /// The port when the URL gives none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http | Scheme::H2c => 80,
            Scheme::Https => 443,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }

    /// The `:scheme` of an HTTP/2 request over it.
    pub fn h2_scheme(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http | Scheme::H2c => "http",
        }
    }
}

/// The URLs of a `--url URL[,URL..]` list. A comma separates two URLs only where the next
/// one begins (`,http://`, `,https://` or `,h2c://`), so a comma inside a path or query stays
/// its own.
pub fn split_list(text: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    let mut rest = text;
    loop {
        let next = [",http://", ",https://", ",h2c://"]
            .iter()
            .filter_map(|sep| rest.find(sep))
            .min();
        match next {
            Some(at) => {
                urls.push(&rest[..at]);
                rest = &rest[at + 1..];
            }
            None => {
                urls.push(rest);
                return urls;
            }
        }
    }
}

/// A parsed and resolved URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http`, `https` or `h2c`.
    pub scheme: Scheme,
    /// The host as written, without port or IPv6 brackets: the TLS server name (SNI and
    /// certificate check; an IP literal is checked against the certificate's IP addresses).
    pub host: String,
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
        let (scheme, rest) = Scheme::split(text).ok_or_else(|| {
            format!("{text:?}: only http://, https:// and h2c:// URLs are supported")
        })?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let malformed = || format!("{text:?}: expected {}://HOST[:PORT]/PATH", scheme.name());
        if authority.is_empty() || authority.contains('@') {
            return Err(malformed());
        }
        let (host, port) = split_port(authority).ok_or_else(malformed)?;
        let port = port.unwrap_or(scheme.default_port());
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{text:?}: cannot resolve {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{text:?}: {authority:?} has no address"))?;
        let url = Url {
            scheme,
            host: host.to_owned(),
            host_header: authority.to_owned(),
            target,
            addr,
        };
        if scheme == Scheme::Https {
            url.server_name()?;
        }
        Ok(url)
    }

    /// The name the TLS client asks for and checks the certificate against.
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone())
            .map_err(|e| format!("{self}: {:?} is not a TLS server name: {e}", self.host))
    }
}

/// `host[:port]` or `[v6][:port]` → the host without brackets, and the port if given.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(port) => Some((host, Some(port.parse().ok()?))),
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.name(),
            self.host_header,
            self.target
        )
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
        assert_eq!((u.scheme, u.host.as_str()), (Scheme::Http, "127.0.0.1"));
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
        assert!(Url::parse("ftp://127.0.0.1/").is_err());
        assert!(Url::parse("HTTP://127.0.0.1/").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert!(Url::parse("http://127.0.0.1:port/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://[::1/").is_err());
        assert!(Url::parse("http://user@127.0.0.1/").is_err());
    }

    #[test]
    fn https_defaults_to_443_and_keeps_the_server_name() {
        let u = Url::parse("https://127.0.0.1/stream").unwrap();
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(u.host_header, "127.0.0.1");
        assert_eq!(
            u.server_name().unwrap(),
            ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into())
        );
        assert_eq!(u.to_string(), "https://127.0.0.1/stream");

        let u = Url::parse("https://[::1]:8443?topic=a").unwrap();
        assert_eq!(u.addr, "[::1]:8443".parse().unwrap());
        assert_eq!((u.host.as_str(), u.target.as_str()), ("::1", "/?topic=a"));
        assert!(matches!(u.server_name().unwrap(), ServerName::IpAddress(_)));

        // A DNS name goes out as SNI and is what the certificate must name.
        let u = Url::parse("https://localhost:8443/stream").unwrap();
        assert_eq!((u.host.as_str(), u.addr.port()), ("localhost", 8443));
        assert_eq!(
            u.server_name().unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        assert!(Url::parse("https:///stream").is_err());
    }

    #[test]
    fn h2c_is_plain_http2_on_port_80_by_default() {
        let u = Url::parse("h2c://127.0.0.1/stream").unwrap();
        assert_eq!((u.scheme, u.addr.port()), (Scheme::H2c, 80));
        assert_eq!(u.scheme.h2_scheme(), "http");
        assert_eq!(u.to_string(), "h2c://127.0.0.1/stream");
        assert_eq!(Scheme::Https.h2_scheme(), "https");
    }

    #[test]
    fn the_scheme_is_known_without_resolving() {
        assert_eq!(
            Scheme::of("https://no.such.host.invalid/"),
            Some(Scheme::Https)
        );
        assert_eq!(
            Scheme::of("http://no.such.host.invalid/"),
            Some(Scheme::Http)
        );
        assert_eq!(Scheme::of("no.such.host.invalid"), None);
        assert_eq!(Scheme::of("h2c://no.such.host.invalid/"), Some(Scheme::H2c));
    }

    #[test]
    fn a_url_list_splits_only_where_a_url_begins() {
        assert_eq!(split_list("http://a/s"), vec!["http://a/s"]);
        assert_eq!(
            split_list("http://a/s?x=1,2,https://b:8443/s,http://c/"),
            vec!["http://a/s?x=1,2", "https://b:8443/s", "http://c/"]
        );
        assert_eq!(
            split_list("h2c://a/s,h2c://b/s"),
            vec!["h2c://a/s", "h2c://b/s"]
        );
    }
}
