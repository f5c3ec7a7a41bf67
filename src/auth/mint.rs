//! `sse-edge token`: mints a token for `--subscribe-jwt` / `--publish-jwt`, for trying a node
//! out and for scripts. An app in production signs its own tokens with its JWT library; the
//! claims it needs are the ones this prints.

use std::ffi::OsString;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The `token` subcommand's flags.
#[derive(Debug, Parser)]
#[command(
    name = "sse-edge token",
    about = "Print a signed token (JWT) that a node started with --subscribe-jwt or --publish-jwt accepts.",
    after_help = "Example: SSE_EDGE_TOKEN_KEY=$SECRET sse-edge token --subscribe 'user/42/*' --ttl 600"
)]
pub struct MintArgs {
    /// The signing key: an HS256 secret (the same string as the node's KEY), or file:PATH to
    /// a PEM private key (RSA: RS256, P-256: ES256, Ed25519: EdDSA).
    #[arg(
        long,
        env = "SSE_EDGE_TOKEN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: String,

    /// A topic, or a prefix ending in `*`, the token may subscribe to (repeatable).
    #[arg(long, value_name = "TOPIC")]
    pub subscribe: Vec<String>,

    /// A topic, or a prefix ending in `*`, the token may publish to (repeatable).
    #[arg(long, value_name = "TOPIC")]
    pub publish: Vec<String>,

    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub ttl: u64,

    /// The audience (`aud`), for a node started with --jwt-audience.
    #[arg(long, value_name = "AUD")]
    pub aud: Option<String>,

    /// The issuer (`iss`), for a node started with --jwt-issuer.
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,

    /// The key id (`kid`): a node tries the key file with this stem first.
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,

    /// The subject (`sub`): who the token is for. The edge does not read it; logs of the
    /// app that minted it may.
    #[arg(long, value_name = "SUB")]
    pub sub: Option<String>,
}

impl MintArgs {
    /// Parses the subcommand's arguments (the first is the program name).
    pub fn parse_args<I, T>(args: I) -> Result<MintArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        MintArgs::try_parse_from(args)
    }
}

/// Signs the token `args` describe, valid from `now` (unix seconds).
pub fn mint(args: &MintArgs, now: u64) -> Result<String, String> {
    let (algorithm, key) = signing_key(&args.key)?;
    let exp = now.checked_add(args.ttl).ok_or("--ttl is too large")?;
    let mut claims = serde_json::json!({
        "exp": exp,
        "iat": now,
        "sse_edge": {"subscribe": args.subscribe, "publish": args.publish},
    });
    if let Some(aud) = &args.aud {
        claims["aud"] = aud.as_str().into();
    }
    if let Some(iss) = &args.iss {
        claims["iss"] = iss.as_str().into();
    }
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.as_str().into();
    }
    let mut header = Header::new(algorithm);
    header.kid = args.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("cannot sign: {e}"))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn signing_key(spec: &str) -> Result<(Algorithm, EncodingKey), String> {
    let Some(path) = spec.strip_prefix("file:") else {
        if spec.len() < crate::auth::jwt::MIN_SECRET {
            return Err(format!(
                "an HS256 secret must be at least {} bytes",
                crate::auth::jwt::MIN_SECRET
            ));
        }
        let key = EncodingKey::from_secret(spec.as_bytes()).map_err(|e| e.to_string())?;
        return Ok((Algorithm::HS256, key));
    };
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
        return Ok((Algorithm::EdDSA, key));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    Err(format!(
        "{path}: not a PEM private key of RSA, P-256 or Ed25519"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{Expect, KeySource, Trust};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_passes_the_node_check() {
        let args = MintArgs::parse_args([
            "token",
            "--key",
            SECRET,
            "--subscribe",
            "user/42/*",
            "--publish",
            "news",
            "--ttl",
            "60",
            "--aud",
            "edge",
            "--iss",
            "app",
        ])
        .unwrap();
        let now = 1_800_000_000;
        let token = mint(&args, now).unwrap();
        let trust = Trust::load(
            "--subscribe-jwt",
            vec![SECRET.parse::<KeySource>().unwrap()],
            Expect {
                audience: Some("edge".into()),
                issuer: Some("app".into()),
            },
        )
        .unwrap();
        let checked = trust.verify(&token, now).unwrap();
        assert_eq!(checked.exp, now + 60);
        assert!(checked.subscribe.allows("user/42/inbox"));
        assert!(checked.publish.allows("news"));
        assert!(!checked.publish.allows("user/42/inbox"));
    }

    #[test]
    fn bad_keys_say_why() {
        let args = |key: &str| MintArgs::parse_args(["token", "--key", key]).unwrap();
        assert!(mint(&args("short"), 0).unwrap_err().contains("32 bytes"));
        assert!(mint(&args("file:/nonexistent.pem"), 0)
            .unwrap_err()
            .contains("/nonexistent.pem"));
    }
}
