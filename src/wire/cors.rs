//! Cross-origin access to streams: `*` by default, and credentialed for listed origins
//! (`--cors-origins`), so a page on another origin can open
//! `new EventSource(url, {withCredentials: true})` and send its token cookie. Publish answers
//! never carry CORS headers: publishing is for servers. Pure.
//!
//! Every answer a stream request can get is built once, at start, per listed origin: opening
//! a stream costs a reference-count bump for its head, not a formatted string.

use bytes::Bytes;

use crate::wire::http::STREAM_HEAD_START;

/// Most origins `--cors-origins` may list.
pub const MAX_ORIGINS: usize = 64;

/// The stream heads and preflight answers for each origin a request may come from.
#[derive(Debug, Clone)]
pub struct Cors {
    /// For each listed origin, what its requests are answered with.
    listed: Vec<Answers>,
    /// For any other request: `*`, which browsers never combine with credentials (so no
    /// cookie travels), plus `Vary: Origin` when some origins are listed.
    other: Answers,
}

/// The CORS parts of the answers to one origin.
#[derive(Debug, Clone)]
struct Answers {
    origin: String,
    /// A whole stream head.
    head: Bytes,
    /// The header lines of a preflight answer.
    preflight: String,
    /// The CORS header lines alone, for a refused stream.
    lines: String,
}

impl Cors {
    /// `*` for everyone (no `--cors-origins`), or credentialed for `origins` and `*` for the
    /// rest.
    pub fn new(origins: &[String]) -> Cors {
        if origins.is_empty() {
            return Cors {
                listed: Vec::new(),
                other: answers(
                    String::new(),
                    "Access-Control-Allow-Origin: *\r\n".to_owned(),
                ),
            };
        }
        let listed = origins
            .iter()
            .map(|origin| {
                let lines = format!(
                    "Access-Control-Allow-Origin: {origin}\r\n\
                     Access-Control-Allow-Credentials: true\r\n\
                     Vary: Origin\r\n"
                );
                answers(origin.clone(), lines)
            })
            .collect();
        Cors {
            listed,
            // Caches must not serve one origin's answer to another.
            other: answers(
                String::new(),
                "Access-Control-Allow-Origin: *\r\nVary: Origin\r\n".to_owned(),
            ),
        }
    }

    /// The whole response head of a stream opened by a request with this `Origin`.
    pub fn stream_head(&self, origin: Option<&str>) -> Bytes {
        self.find(origin).head.clone()
    }

    /// The CORS lines of the answer to a preflight with this `Origin`.
    pub fn preflight_headers(&self, origin: Option<&str>) -> &str {
        &self.find(origin).preflight
    }

    /// The CORS lines of a refused stream request (401, 403), so that a page on a listed
    /// origin can tell a refusal from a network failure.
    pub fn refusal_headers(&self, origin: Option<&str>) -> &str {
        &self.find(origin).lines
    }

    fn find(&self, origin: Option<&str>) -> &Answers {
        origin
            .and_then(|o| self.listed.iter().find(|listed| listed.origin == o))
            .unwrap_or(&self.other)
    }
}

/// What a request from `origin` is answered with, carrying the CORS `lines`.
fn answers(origin: String, lines: String) -> Answers {
    let head = [STREAM_HEAD_START, lines.as_bytes(), b"\r\n"].concat();
    let preflight = format!(
        "{lines}Access-Control-Allow-Methods: GET, OPTIONS\r\n\
         Access-Control-Allow-Headers: Last-Event-ID, Cache-Control, Authorization\r\n\
         Access-Control-Max-Age: 86400\r\n"
    );
    Answers {
        origin,
        head: Bytes::from(head),
        preflight,
        lines,
    }
}

/// Parses `--cors-origins`: exact origins (`scheme://host[:port]`), no paths, no wildcards.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad =
        |why: &str| format!("{s:?} is not an origin ({why}); write e.g. https://app.example.com");
    let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '*', '@']) {
        return Err(bad("only scheme://host[:port], no path or wildcard"));
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(bad("unexpected character"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn without_the_flag_every_origin_gets_star() {
        let cors = Cors::new(&[]);
        for origin in [None, Some("https://evil.example")] {
            let head = cors.stream_head(origin);
            assert!(text(&head).contains("Access-Control-Allow-Origin: *\r\n"));
            assert!(!text(&head).contains("Credentials"));
            assert!(text(&head).ends_with("\r\n\r\n"));
        }
    }

    #[test]
    fn listed_origins_get_credentials_others_a_plain_star() {
        let cors = Cors::new(&["https://app.example".into(), "http://127.0.0.1:9".into()]);
        let head = cors.stream_head(Some("https://app.example"));
        let head = text(&head);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Access-Control-Allow-Origin: https://app.example\r\n"));
        assert!(head.contains("Access-Control-Allow-Credentials: true\r\n"));
        assert!(head.contains("Vary: Origin\r\n"));
        for origin in [
            Some("https://evil.example"),
            Some("https://app.example.evil"),
            None,
        ] {
            let head = cors.stream_head(origin);
            assert!(
                text(&head).contains("Access-Control-Allow-Origin: *\r\n"),
                "{origin:?}"
            );
            assert!(!text(&head).contains("Credentials"), "{origin:?}");
            assert!(text(&head).contains("Vary: Origin\r\n"));
        }
        let preflight = cors.preflight_headers(Some("http://127.0.0.1:9"));
        assert!(preflight.contains("Access-Control-Allow-Origin: http://127.0.0.1:9\r\n"));
        assert!(preflight.contains("Authorization"));
        assert!(!cors
            .preflight_headers(Some("http://127.0.0.1:10"))
            .contains("Credentials"));
        assert!(cors
            .refusal_headers(Some("https://app.example"))
            .contains("Access-Control-Allow-Credentials: true"));
        assert!(!cors.refusal_headers(None).contains("Credentials"));
    }

    #[test]
    fn origins_are_exact() {
        assert_eq!(
            parse_origin(" https://a.example:8443 ").unwrap(),
            "https://a.example:8443"
        );
        assert!(parse_origin("http://[::1]:80").is_ok());
        for bad in [
            "a.example",
            "ftp://a",
            "https://a/path",
            "https://*.a",
            "https://",
            "*",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
