//! Signed tokens (JWT): the keys a node trusts, checking a token's signature and claims, and
//! the topics it grants.
//!
//! The algorithm of each key comes from the key, never from the token: an HS256 secret, or a
//! PEM public key whose type says RS256, ES256 or EdDSA. A token whose header names another
//! algorithm is refused before any signature is checked, so `alg: none` and HS/RS confusion
//! (an RSA public key used as an HMAC secret) cannot work. Signatures are checked by
//! `jsonwebtoken` (over aws-lc-rs); claims are checked here, against a clock the caller
//! passes in, so that an expired but correctly signed token can be told apart from a bad one.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key as long as the hash (256 bits).
pub const MIN_SECRET: usize = 32;

/// Most keys one flag list may name (each is tried in turn on a token without a known `kid`).
pub const MAX_KEYS: usize = 16;

/// One `--subscribe-jwt` / `--publish-jwt` value: a secret, or a PEM public key file.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HS256 secret, as given.
    Secret(String),
    /// `file:PATH`: a PEM public key, re-read on `SIGHUP`.
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(..)"),
            KeySource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl FromStr for KeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<KeySource, String> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path to a PEM public key".to_owned());
            }
            return Ok(KeySource::File(PathBuf::from(path)));
        }
        if s.len() < MIN_SECRET {
            return Err(format!(
                "an HS256 secret must be at least {MIN_SECRET} bytes (or use file:PATH for a PEM public key)"
            ));
        }
        Ok(KeySource::Secret(s.to_owned()))
    }
}

/// A key ready to check signatures.
struct Key {
    /// The `kid` a token names to be checked with this key first: a key file's stem.
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Key {
    fn load(source: &KeySource) -> Result<Key, String> {
        match source {
            KeySource::Secret(secret) => Ok(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| format!("unusable HS256 secret: {e}"))?,
            }),
            KeySource::File(path) => {
                let shown = path.display();
                let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
                let (algorithm, key) = public_key(&pem).map_err(|why| format!("{shown}: {why}"))?;
                Ok(Key {
                    kid: path.file_stem().and_then(|s| s.to_str()).map(str::to_owned),
                    algorithm,
                    key,
                })
            }
        }
    }
}

/// The algorithm and key of a PEM public key, by the key's type.
fn public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    if text.contains("PRIVATE KEY-----") {
        // Refused rather than used: a private key has no business on an edge that only checks.
        return Err("is a private key; give the public key (openssl pkey -pubout)".to_owned());
    }
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| format!("bad RSA key: {e}"))?;
        return Ok((Algorithm::RS256, key));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err("no PEM public key (-----BEGIN PUBLIC KEY-----) found".to_owned());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((Algorithm::EdDSA, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // ES256 is P-256 only; a P-384 key would make every signature fail, silently.
        return match ec_point_len(&key) {
            Some(65) => Ok((Algorithm::ES256, key)),
            _ => Err("only P-256 (ES256) elliptic-curve keys are supported".to_owned()),
        };
    }
    Err("not an RSA, P-256 or Ed25519 public key".to_owned())
}

/// The length of an EC key's uncompressed point: 65 bytes on P-256.
fn ec_point_len(key: &DecodingKey) -> Option<usize> {
    key.try_get_as_bytes().ok().map(<[u8]>::len)
}

/// A set of keys loaded from their sources, in the order given.
struct Keys {
    keys: Vec<Key>,
}

impl Keys {
    fn load(sources: &[KeySource]) -> Result<Keys, String> {
        if sources.len() > MAX_KEYS {
            return Err(format!("at most {MAX_KEYS} keys per flag"));
        }
        let keys = sources.iter().map(Key::load).collect::<Result<_, _>>()?;
        Ok(Keys { keys })
    }
}

/// The registered claims a node requires, when set (`--jwt-audience`, `--jwt-issuer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// `aud` must name this.
    pub audience: Option<String>,
    /// `iss` must be exactly this: a token signed with the same secret by another app (or for
    /// another environment) is refused.
    pub issuer: Option<String>,
}

/// The keys behind one flag (`--subscribe-jwt` or `--publish-jwt`), reloadable, with the
/// claims tokens must carry. Shared by every shard.
pub struct Trust {
    flag: &'static str,
    sources: Vec<KeySource>,
    expect: Expect,
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("flag", &self.flag)
            .field("sources", &self.sources)
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Loads every key; an unreadable or unusable one is an error naming it.
    pub fn load(
        flag: &'static str,
        sources: Vec<KeySource>,
        expect: Expect,
    ) -> Result<Trust, String> {
        let keys = Keys::load(&sources)?;
        Ok(Trust {
            flag,
            sources,
            expect,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Re-reads the key files. On any error the keys in use stay and the error is returned;
    /// on success, how many keys are now trusted.
    pub fn reload(&self) -> Result<usize, String> {
        let keys = Keys::load(&self.sources)?;
        let count = keys.keys.len();
        let mut current = self
            .keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        *current = Arc::new(keys);
        Ok(count)
    }

    /// The flag these keys came from, for log lines.
    pub fn flag(&self) -> &'static str {
        self.flag
    }

    /// Whether any key is read from a file (only those change on reload).
    pub fn has_files(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, KeySource::File(_)))
    }

    /// Checks `token` at unix time `now` (seconds): its signature by one of the keys (the one
    /// its `kid` names first), then its claims. An expired token whose signature is good is
    /// [`Refusal::Expired`], carrying what it granted.
    pub fn verify(&self, token: &str, now: u64) -> Result<Token, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        let named = |key: &&Key| key.kid.is_some() && key.kid == header.kid;
        let ordered = keys
            .keys
            .iter()
            .filter(named)
            .chain(keys.keys.iter().filter(|k| !named(k)));
        let mut algorithm_known = false;
        for key in ordered {
            if key.algorithm != header.alg {
                continue;
            }
            algorithm_known = true;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &signature_only(key.algorithm)) {
                Ok(data) => return check_claims(data.claims, &self.expect, now),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    _ => return Err(Refusal::Malformed),
                },
            }
        }
        Err(if algorithm_known {
            Refusal::BadSignature
        } else {
            Refusal::Algorithm
        })
    }
}

/// Signature and algorithm only: the claims are checked by [`check_claims`], which knows
/// an expired token from a bad one and uses the caller's clock.
fn signature_only(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

/// The claims this edge reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    aud: Option<Audience>,
    iss: Option<String>,
    #[serde(default)]
    sse_edge: Option<GrantClaims>,
}

/// RFC 7519 NumericDate: seconds, possibly with a fraction.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct NumericDate(f64);

impl NumericDate {
    /// Whole seconds; a negative or absurd value is none.
    fn seconds(&self) -> Option<u64> {
        let s = self.0.floor();
        (s.is_finite() && (0.0..=u64::MAX as f64).contains(&s)).then_some(s as u64)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct GrantClaims {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// A token that passed: when it expires and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its `exp`, unix seconds.
    pub exp: u64,
    /// Topics it may subscribe to.
    pub subscribe: Grants,
    /// Topics it may publish to.
    pub publish: Grants,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not three base64url parts with a JSON header naming a known algorithm (`none` is not).
    Malformed,
    /// No trusted key is of the algorithm the token names.
    Algorithm,
    /// No trusted key of its algorithm signed it.
    BadSignature,
    /// It carries no `exp`.
    NoExpiry,
    /// Its `nbf` is in the future.
    NotYetValid,
    /// `--jwt-audience` is set and the token's `aud` does not name it.
    WrongAudience,
    /// `--jwt-issuer` is set and the token's `iss` is not it.
    WrongIssuer,
    /// Correctly signed and otherwise valid, but `exp` has passed.
    Expired(Token),
}

impl Refusal {
    /// The one line a client is told (never anything of the token itself).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed => "the token is not a well-formed JWT",
            Refusal::Algorithm => "the token's algorithm is not the one its key is for",
            Refusal::BadSignature => "the token is not signed by a trusted key",
            Refusal::NoExpiry => "the token has no exp claim",
            Refusal::NotYetValid => "the token is not valid yet (nbf)",
            Refusal::WrongAudience => "the token is for another audience",
            Refusal::WrongIssuer => "the token is from another issuer",
            Refusal::Expired(_) => "the token has expired",
        }
    }
}

/// Checks signed claims at unix time `now`: `exp` is required and has no leeway (a token is
/// expired from its `exp` second on), `nbf` is checked when present, `aud` when `audience`
/// is set, `iss` when `issuer` is. Expiry is judged last, so an expired token is one that is
/// otherwise good.
fn check_claims(claims: Claims, expect: &Expect, now: u64) -> Result<Token, Refusal> {
    let exp = claims
        .exp
        .as_ref()
        .and_then(NumericDate::seconds)
        .ok_or(Refusal::NoExpiry)?;
    if let Some(nbf) = &claims.nbf {
        if nbf.seconds().is_none_or(|nbf| nbf > now) {
            return Err(Refusal::NotYetValid);
        }
    }
    if let Some(wanted) = expect.issuer.as_deref() {
        if claims.iss.as_deref() != Some(wanted) {
            return Err(Refusal::WrongIssuer);
        }
    }
    if let Some(wanted) = expect.audience.as_deref() {
        let named = match &claims.aud {
            Some(Audience::One(aud)) => aud == wanted,
            Some(Audience::Many(auds)) => auds.iter().any(|aud| aud == wanted),
            None => false,
        };
        if !named {
            return Err(Refusal::WrongAudience);
        }
    }
    let grants = claims.sse_edge.unwrap_or_default();
    let token = Token {
        exp,
        subscribe: Grants::new(grants.subscribe),
        publish: Grants::new(grants.publish),
    };
    if now >= exp {
        return Err(Refusal::Expired(token));
    }
    Ok(token)
}

/// Topic names and prefixes (an entry ending in `*`) a token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    entries: Vec<String>,
}

impl Grants {
    /// Grants from the claim's entries.
    pub fn new(entries: Vec<String>) -> Grants {
        Grants { entries }
    }

    /// Whether `topic` is named, or starts with a granted prefix (`user/42/*` grants
    /// `user/42/inbox`; `*` grants every topic).
    pub fn allows(&self, topic: &str) -> bool {
        self.entries
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => entry == topic,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn hs(claims: &serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn trust(secrets: &[&str], audience: Option<&str>) -> Trust {
        let sources = secrets.iter().map(|s| s.parse().unwrap()).collect();
        let expect = Expect {
            audience: audience.map(str::to_owned),
            issuer: None,
        };
        Trust::load("--subscribe-jwt", sources, expect).unwrap()
    }

    #[test]
    fn a_good_token_grants_its_topics() {
        let token = hs(
            &json!({"exp": NOW + 60, "sse_edge": {"subscribe": ["news", "user/42/*"], "publish": ["news"]}}),
            SECRET,
        );
        let got = trust(&[SECRET], None).verify(&token, NOW).unwrap();
        assert_eq!(got.exp, NOW + 60);
        assert!(got.subscribe.allows("news"));
        assert!(got.subscribe.allows("user/42/inbox"));
        assert!(got.subscribe.allows("user/42/"));
        assert!(!got.subscribe.allows("user/43/inbox"));
        assert!(!got.subscribe.allows("user/4"));
        assert!(!got.subscribe.allows("newsroom"));
        assert!(got.publish.allows("news"));
        assert!(!got.publish.allows("user/42/inbox"));
    }

    #[test]
    fn star_grants_everything_and_no_claim_grants_nothing() {
        let all = Grants::new(vec!["*".into()]);
        assert!(all.allows("anything/at:all"));
        assert!(!Grants::default().allows("news"));
        let token = hs(&json!({"exp": NOW + 60}), SECRET);
        let got = trust(&[SECRET], None).verify(&token, NOW).unwrap();
        assert!(!got.subscribe.allows("news"));
    }

    #[test]
    fn expiry_has_no_leeway_and_keeps_the_grants() {
        let token = hs(
            &json!({"exp": NOW, "sse_edge": {"subscribe": ["news"]}}),
            SECRET,
        );
        let t = trust(&[SECRET], None);
        assert!(t.verify(&token, NOW - 1).is_ok());
        match t.verify(&token, NOW) {
            Err(Refusal::Expired(token)) => {
                assert_eq!(token.exp, NOW);
                assert!(token.subscribe.allows("news"));
            }
            other => panic!("expected Expired, got {other:?}"),
        }
        let fractional = hs(&json!({"exp": (NOW as f64) + 0.5}), SECRET);
        assert!(matches!(
            t.verify(&fractional, NOW),
            Err(Refusal::Expired(_))
        ));
    }

    #[test]
    fn exp_is_required_and_must_be_a_date() {
        let t = trust(&[SECRET], None);
        assert_eq!(
            t.verify(&hs(&json!({"sub": "x"}), SECRET), NOW),
            Err(Refusal::NoExpiry)
        );
        assert_eq!(
            t.verify(&hs(&json!({"exp": -5}), SECRET), NOW),
            Err(Refusal::NoExpiry)
        );
        assert_eq!(
            t.verify(&hs(&json!({"exp": "tomorrow"}), SECRET), NOW),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn not_yet_valid() {
        let t = trust(&[SECRET], None);
        let early = hs(&json!({"exp": NOW + 60, "nbf": NOW + 1}), SECRET);
        assert_eq!(t.verify(&early, NOW), Err(Refusal::NotYetValid));
        assert!(t.verify(&early, NOW + 1).is_ok());
    }

    #[test]
    fn audience() {
        let t = trust(&[SECRET], Some("edge"));
        let for_us = hs(&json!({"exp": NOW + 60, "aud": "edge"}), SECRET);
        let among = hs(&json!({"exp": NOW + 60, "aud": ["app", "edge"]}), SECRET);
        let other = hs(&json!({"exp": NOW + 60, "aud": "app"}), SECRET);
        let none = hs(&json!({"exp": NOW + 60}), SECRET);
        assert!(t.verify(&for_us, NOW).is_ok());
        assert!(t.verify(&among, NOW).is_ok());
        assert_eq!(t.verify(&other, NOW), Err(Refusal::WrongAudience));
        assert_eq!(t.verify(&none, NOW), Err(Refusal::WrongAudience));
        // Without --jwt-audience, aud is not looked at.
        assert!(trust(&[SECRET], None).verify(&other, NOW).is_ok());
    }

    #[test]
    fn issuer() {
        let expect = Expect {
            audience: None,
            issuer: Some("https://app.example".into()),
        };
        let t = Trust::load("--subscribe-jwt", vec![SECRET.parse().unwrap()], expect).unwrap();
        let ours = hs(
            &json!({"exp": NOW + 60, "iss": "https://app.example"}),
            SECRET,
        );
        let other = hs(
            &json!({"exp": NOW + 60, "iss": "https://staging.example"}),
            SECRET,
        );
        let near = hs(
            &json!({"exp": NOW + 60, "iss": "https://app.example/"}),
            SECRET,
        );
        let none = hs(&json!({"exp": NOW + 60}), SECRET);
        assert!(t.verify(&ours, NOW).is_ok());
        for token in [&other, &near, &none] {
            assert_eq!(t.verify(token, NOW), Err(Refusal::WrongIssuer));
        }
        // An expired token from another issuer is refused, not told `expired`.
        let old = hs(
            &json!({"exp": NOW - 1, "iss": "https://staging.example"}),
            SECRET,
        );
        assert_eq!(t.verify(&old, NOW), Err(Refusal::WrongIssuer));
        // Without --jwt-issuer, iss is not looked at.
        assert!(trust(&[SECRET], None).verify(&other, NOW).is_ok());
    }

    #[test]
    fn wrong_key_and_rotation() {
        let old = "old-secret-old-secret-old-secret-0";
        let token = hs(&json!({"exp": NOW + 60}), old);
        assert_eq!(
            trust(&[SECRET], None).verify(&token, NOW),
            Err(Refusal::BadSignature)
        );
        assert!(trust(&[SECRET, old], None).verify(&token, NOW).is_ok());
        assert!(trust(&[old, SECRET], None).verify(&token, NOW).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} and {"exp":1800000060}, base64url.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let claims = "eyJleHAiOjE4MDAwMDAwNjB9";
        for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
            assert_eq!(
                trust(&[SECRET], None).verify(&token, NOW),
                Err(Refusal::Malformed)
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let t = trust(&[SECRET], None);
        for token in ["", "a", "a.b", "a.b.c", "....", "\u{0}.\u{0}.\u{0}"] {
            assert_eq!(t.verify(token, NOW), Err(Refusal::Malformed), "{token:?}");
        }
    }

    #[test]
    fn hs_token_against_an_rsa_key_is_refused() {
        // Algorithm confusion: an attacker signs HS256 with the RSA public key's bytes as the
        // secret. The node trusts only RS256 for that key, so the token's alg is refused.
        let dir = std::env::temp_dir().join(format!("sse-edge-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rsa.pem");
        std::fs::write(&path, RSA_PUBLIC).unwrap();
        let t = Trust::load(
            "--subscribe-jwt",
            vec![KeySource::File(path)],
            Expect::default(),
        )
        .unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": NOW + 60}),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(t.verify(&forged, NOW), Err(Refusal::Algorithm));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pem_files_are_judged_by_type() {
        assert!(matches!(
            public_key(RSA_PUBLIC.as_bytes()),
            Ok((Algorithm::RS256, _))
        ));
        let private =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(public_key(private.as_bytes())
            .unwrap_err()
            .contains("private key"));
        assert!(public_key(b"hello").is_err());
        assert!(public_key(b"\xff\xfe").is_err());
    }

    #[test]
    fn key_sources() {
        assert!("short".parse::<KeySource>().is_err());
        assert!("file:".parse::<KeySource>().is_err());
        assert_eq!(
            "file:/etc/k.pem".parse::<KeySource>(),
            Ok(KeySource::File("/etc/k.pem".into()))
        );
        let secret: KeySource = SECRET.parse().unwrap();
        assert!(!format!("{secret:?}").contains(SECRET));
        let missing = Trust::load(
            "--subscribe-jwt",
            vec![KeySource::File("/nonexistent/k.pem".into())],
            Expect::default(),
        );
        assert!(missing.unwrap_err().contains("/nonexistent/k.pem"));
    }

    proptest::proptest! {
        /// Whatever a client sends as a token, checking it answers and never panics; one
        /// that is not signed by the key is never accepted.
        #[test]
        fn arbitrary_tokens_are_refused_without_panic(
            header in proptest::prelude::any::<String>(),
            claims in proptest::prelude::any::<String>(),
            signature in "[A-Za-z0-9_-]{0,64}",
            raw in proptest::prelude::any::<String>(),
        ) {
            use base64::Engine as _;
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            let t = trust(&[SECRET], Some("edge"));
            let shaped = format!("{}.{}.{signature}", b64(&header), b64(&claims));
            let typed = format!(
                "{}.{}.{signature}",
                b64(r#"{"alg":"HS256","typ":"JWT"}"#),
                b64(&format!(r#"{{"exp":{},"aud":{:?},"sse_edge":{claims:?}}}"#, NOW + 5, "edge"))
            );
            for token in [raw.as_str(), &shaped, &typed] {
                proptest::prop_assert!(t.verify(token, NOW).is_err());
            }
        }
    }

    /// A 2048-bit RSA public key (SPKI), for the algorithm-confusion test.
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----
";
}
