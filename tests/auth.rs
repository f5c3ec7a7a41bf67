//! Who may subscribe, and to what: JWTs for streams and publishers, from a header, the
//! `sse_edge_token` cookie or (with `--token-in-query`) the URL; expiry that ends a stream
//! with `event: expired` and lets the browser come back; key rotation and reload; PEM keys of
//! every supported type; credentialed CORS. Against the real binary, tokens signed here.

mod util;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use util::{published_id, Server, SseClient};

const SECRET: &str = "test-secret-test-secret-test-secret";
const OTHER: &str = "second-secret-second-secret-second";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(
    claims: &serde_json::Value,
    key: &EncodingKey,
    alg: Algorithm,
    kid: Option<&str>,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// An HS256 token valid for `ttl` seconds, granting `subscribe` and `publish`.
fn token(secret: &str, ttl: i64, subscribe: &[&str], publish: &[&str]) -> String {
    let claims = json!({
        "exp": now() as i64 + ttl,
        "sse_edge": {"subscribe": subscribe, "publish": publish},
    });
    sign(
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        Algorithm::HS256,
        None,
    )
}

fn stream_with(server: &Server, path: &str, extra: &[&str]) -> SseClient {
    SseClient::connect_raw(server.addr, path, extra)
}

fn status(c: &SseClient) -> u16 {
    c.head[9..12].parse().unwrap()
}

fn header<'a>(c: &'a SseClient, name: &str) -> Option<&'a str> {
    c.head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn publish(server: &Server, topic: &str, body: &str, bearer: Option<&str>) -> util::Response {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    server.request(
        format!(
            "POST /broadcast?topic={topic} HTTP/1.1\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn tokens_from_header_cookie_and_query() {
    let server = Server::start(&["--subscribe-jwt", SECRET, "--token-in-query"]);
    let t = token(SECRET, 600, &["news"], &[]);
    let mut by_header = SseClient::connect(
        server.addr,
        "/stream?topic=news",
        &[&format!("Authorization: Bearer {t}")],
    );
    let mut by_cookie = SseClient::connect(
        server.addr,
        "/stream?topic=news",
        &[&format!("Cookie: theme=dark; sse_edge_token={t}")],
    );
    let mut by_query = SseClient::connect(
        server.addr,
        &format!("/stream?topic=news&access_token={t}"),
        &[],
    );
    assert_eq!(published_id(&publish(&server, "news", "hello", None)), 1);
    for c in [&mut by_header, &mut by_cookie, &mut by_query] {
        let e = c.next_event();
        assert_eq!((e.id.as_deref(), e.data.as_str()), (Some("1"), "hello"));
    }
    // Nothing of a token reaches the log, even at debug level on another server.
    assert!(!server.log().contains(&t[t.len() - 20..]));
}

#[test]
fn missing_bad_and_ungranted_tokens() {
    let server = Server::start(&["--subscribe-jwt", SECRET, "--log", "debug"]);
    let good = token(SECRET, 600, &["news", "user/42/*"], &[]);
    let cases: [(&str, Vec<String>, u16); 7] = [
        ("/stream?topic=news", vec![], 401),
        (
            "/stream?topic=news",
            vec!["Authorization: Bearer nonsense".into()],
            401,
        ),
        (
            "/stream?topic=news",
            vec![format!(
                "Authorization: Bearer {}",
                token(OTHER, 600, &["news"], &[])
            )],
            401,
        ),
        // A token in the URL without --token-in-query is refused, not silently ignored.
        (
            &format!("/stream?topic=news&access_token={good}"),
            vec![],
            401,
        ),
        (
            "/stream?topic=secret",
            vec![format!("Authorization: Bearer {good}")],
            403,
        ),
        (
            "/stream?topic=news&topic=user/43/inbox",
            vec![format!("Cookie: sse_edge_token={good}")],
            403,
        ),
        (
            "/stream",
            vec![format!("Cookie: sse_edge_token={good}")],
            403,
        ), // the default topic
    ];
    for (path, extra, want) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let c = stream_with(&server, path, &extra);
        assert_eq!(status(&c), *want, "{path} {extra:?}: {}", c.head);
        if *want == 401 {
            assert_eq!(header(&c, "www-authenticate"), Some("Bearer"));
        }
    }
    let mut ok = SseClient::connect(
        server.addr,
        "/stream?topic=news&topic=user/42/inbox",
        &[&format!("Cookie: sse_edge_token={good}")],
    );
    publish(&server, "user/42/inbox", "for 42", None);
    assert_eq!(ok.next_event().data, "for 42");
    let log = server.log();
    assert!(
        !log.contains(&good[good.len() - 20..]),
        "a token reached the log"
    );
    let m = server.metrics();
    assert_eq!(m["sse_edge_rejected_requests_total"], cases.len() as f64);
}

#[test]
fn an_expiring_token_ends_the_stream_and_a_fresh_one_resumes_without_a_gap() {
    let server = Server::start(&["--subscribe-jwt", SECRET]);
    let short = token(SECRET, 3, &["news"], &[]);
    let cookie = format!("Cookie: sse_edge_token={short}");
    let mut c = SseClient::connect(server.addr, "/stream?topic=news", &[&cookie]);
    let exp = now() + 3; // within a second of the token's
    assert_eq!(published_id(&publish(&server, "news", "before", None)), 1);
    let first = c.next_event();
    assert_eq!(first.data, "before");
    let opened = Instant::now();
    let notice = c.next_event();
    assert_eq!(notice.event.as_deref(), Some("expired"));
    assert_eq!(notice.id, None, "a notice must not move Last-Event-ID");
    let data: serde_json::Value = serde_json::from_str(&notice.data).unwrap();
    let told = data["exp"].as_u64().unwrap();
    assert!(told.abs_diff(exp) <= 1, "exp {told} vs {exp}");
    let retry = c.retry.unwrap();
    assert!((5000..10000).contains(&retry), "retry {retry}");
    // Closed before the token's exp, not after.
    assert!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            <= told
    );
    assert!(
        c.try_next_event().is_none(),
        "the stream must close after the notice"
    );
    assert!(opened.elapsed() < Duration::from_secs(10));

    // Events published while the tab has no valid token...
    while now() < told {
        std::thread::sleep(Duration::from_millis(100));
    }
    let id2 = published_id(&publish(&server, "news", "missed 1", None));
    // ...and a reconnect with the expired cookie: 200, expired again (the browser retries).
    let mut again = SseClient::connect(
        server.addr,
        "/stream?topic=news",
        &[&cookie, "Last-Event-ID: 1"],
    );
    let notice = again.next_event();
    assert_eq!(notice.event.as_deref(), Some("expired"));
    assert!(again.try_next_event().is_none());
    let id3 = published_id(&publish(&server, "news", "missed 2", None));

    // The refreshed cookie resumes after the last event seen: nothing lost, nothing twice.
    let fresh = token(SECRET, 600, &["news"], &[]);
    let mut resumed = SseClient::connect(
        server.addr,
        "/stream?topic=news",
        &[
            &format!("Cookie: sse_edge_token={fresh}"),
            "Last-Event-ID: 1",
        ],
    );
    let a = resumed.next_event();
    let b = resumed.next_event();
    assert_eq!(
        (a.id, a.data),
        (Some(id2.to_string()), "missed 1".to_owned())
    );
    assert_eq!(
        (b.id, b.data),
        (Some(id3.to_string()), "missed 2".to_owned())
    );
    let m = server.metrics();
    assert_eq!(m["sse_edge_streams_expired_total"], 1.0);
    assert_eq!(m["sse_edge_expired_tokens_total"], 1.0);
    assert_eq!(m["sse_edge_clients"], 1.0);
}

#[test]
fn key_rotation_kid_first_and_sighup_reload() {
    let dir = util::tempdir("auth-rotation");
    let (current_public, current_private) = ed25519_pair();
    let (next_public, next_private) = ed25519_pair();
    let file = dir.join("2026-12.pem");
    std::fs::write(&file, &current_public).unwrap();
    let key_arg = format!("file:{}", file.display());
    let server = Server::start(&["--subscribe-jwt", SECRET, "--subscribe-jwt", &key_arg]);
    let claims = json!({"exp": now() + 600, "sse_edge": {"subscribe": ["*"]}});
    let ed = |private: &str, kid: Option<&str>| {
        sign(
            &claims,
            &EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            Algorithm::EdDSA,
            kid,
        )
    };
    let open = |t: &str| {
        status(&stream_with(
            &server,
            "/stream",
            &[&format!("Authorization: Bearer {t}")],
        ))
    };
    // Both keys work: the secret, and the file key with or without its kid.
    assert_eq!(open(&token(SECRET, 600, &["*"], &[])), 200);
    assert_eq!(open(&ed(&current_private, Some("2026-12"))), 200);
    assert_eq!(open(&ed(&current_private, None)), 200);
    assert_eq!(open(&ed(&current_private, Some("unknown-kid"))), 200);
    assert_eq!(open(&ed(&next_private, Some("2026-12"))), 401);

    // An open stream survives the reload; the new key is trusted, the old one no longer.
    let mut kept = SseClient::connect(
        server.addr,
        "/stream",
        &[&format!(
            "Authorization: Bearer {}",
            ed(&current_private, None)
        )],
    );
    std::fs::write(&file, &next_public).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("--subscribe-jwt: 2 keys loaded");
    assert_eq!(open(&ed(&next_private, Some("2026-12"))), 200);
    assert_eq!(open(&ed(&current_private, Some("2026-12"))), 401);
    assert_eq!(open(&token(SECRET, 600, &["*"], &[])), 200);
    publish(&server, "default", "still here", None);
    assert_eq!(kept.next_event().data, "still here");

    // A reload that fails keeps the keys in use and says why.
    std::fs::write(&file, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("keeping the keys in use");
    assert_eq!(open(&ed(&next_private, None)), 200);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rs256_and_es256_keys_from_pem_files() {
    let dir = util::tempdir("auth-pem");
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_public = pem_text("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref());
    let rsa_private = pem_text(
        "PRIVATE KEY",
        AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa)
            .unwrap()
            .as_ref(),
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec_pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .unwrap();
    let ec_public = pem_text("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref());
    let ec_private = pem_text("PRIVATE KEY", ec_pkcs8.as_ref());
    std::fs::write(dir.join("rsa.pem"), &rsa_public).unwrap();
    std::fs::write(dir.join("ec.pem"), &ec_public).unwrap();
    let rsa_arg = format!("file:{}", dir.join("rsa.pem").display());
    let ec_arg = format!("file:{}", dir.join("ec.pem").display());
    let server = Server::start(&["--subscribe-jwt", &rsa_arg, "--subscribe-jwt", &ec_arg]);
    let claims = json!({"exp": now() + 600, "sse_edge": {"subscribe": ["news"]}});
    let rs = sign(
        &claims,
        &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
        Algorithm::RS256,
        None,
    );
    let es = sign(
        &claims,
        &EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap(),
        Algorithm::ES256,
        None,
    );
    for t in [&rs, &es] {
        let c = stream_with(
            &server,
            "/stream?topic=news",
            &[&format!("Authorization: Bearer {t}")],
        );
        assert_eq!(status(&c), 200, "{}", c.head);
    }
    // Algorithm confusion: HS256 signed with the RSA public key as the secret.
    let forged = sign(
        &claims,
        &EncodingKey::from_secret(rsa_public.as_bytes()).unwrap(),
        Algorithm::HS256,
        None,
    );
    let c = stream_with(
        &server,
        "/stream?topic=news",
        &[&format!("Authorization: Bearer {forged}")],
    );
    assert_eq!(status(&c), 401);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unusable_keys_are_one_line_and_exit_2() {
    let dir = util::tempdir("auth-bad-keys");
    let private = dir.join("private.pem");
    std::fs::write(&private, ed25519_pair().1).unwrap();
    let cases = [
        (
            vec!["--subscribe-jwt".to_owned(), "short".to_owned()],
            "at least 32 bytes",
        ),
        (
            vec![
                "--publish-jwt".to_owned(),
                "file:/nonexistent/key.pem".to_owned(),
            ],
            "/nonexistent/key.pem",
        ),
        (
            vec![
                "--subscribe-jwt".to_owned(),
                format!("file:{}", private.display()),
            ],
            "private key",
        ),
        (vec!["--token-in-query".to_owned()], "needs --subscribe-jwt"),
        (
            vec![
                "--cors-origins".to_owned(),
                "https://a.example/path".to_owned(),
            ],
            "not an origin",
        ),
    ];
    for (args, says) in cases {
        util::assert_refused_at_start(&args, says);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn publishers_with_tokens() {
    let server = Server::start(&["--publish-jwt", SECRET, "--publish-token", "static-token"]);
    let mut sub = server.stream("/stream?topic=news");
    let publisher = token(SECRET, 600, &[], &["news", "feeds/*"]);
    assert_eq!(
        published_id(&publish(&server, "news", "by jwt", Some(&publisher))),
        1
    );
    assert_eq!(sub.next_event().data, "by jwt");
    assert_eq!(
        published_id(&publish(&server, "feeds/a", "prefix", Some(&publisher))),
        2
    );
    let r = publish(&server, "other", "no", Some(&publisher));
    assert_eq!(r.status, 403);
    assert!(r.text().contains("does not grant"));
    // Loopback no longer publishes without a token once tokens are configured.
    let r = publish(&server, "news", "no", None);
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    assert_eq!(
        publish(
            &server,
            "news",
            "no",
            Some(&token(OTHER, 600, &[], &["news"]))
        )
        .status,
        401
    );
    assert_eq!(
        publish(
            &server,
            "news",
            "no",
            Some(&token(SECRET, -5, &[], &["news"]))
        )
        .status,
        401
    );
    // The static token keeps its answers.
    assert_eq!(publish(&server, "news", "no", Some("wrong")).status, 403);
    assert_eq!(
        published_id(&publish(&server, "news", "static", Some("static-token"))),
        3
    );
    assert_eq!(sub.next_event().data, "static");
    // Publish answers never carry CORS.
    let r = publish(&server, "news", "x", Some("static-token"));
    assert!(r.header("access-control-allow-origin").is_none());
}

#[test]
fn credentialed_cors_for_listed_origins_only() {
    let app = "http://127.0.0.1:9999";
    let server = Server::start(&["--cors-origins", &format!("{app},https://app.example")]);
    let listed = SseClient::connect(server.addr, "/stream", &[&format!("Origin: {app}")]);
    assert_eq!(header(&listed, "access-control-allow-origin"), Some(app));
    assert_eq!(
        header(&listed, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(header(&listed, "vary"), Some("Origin"));
    let stranger = SseClient::connect(server.addr, "/stream", &["Origin: https://evil.example"]);
    // Another origin gets `*`, which browsers never combine with credentials: no cookie.
    assert_eq!(header(&stranger, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&stranger, "access-control-allow-credentials"), None);
    assert_eq!(header(&stranger, "vary"), Some("Origin"));
    let preflight = server.request(
        format!("OPTIONS /stream HTTP/1.1\r\nOrigin: {app}\r\nAccess-Control-Request-Method: GET\r\n\r\n").as_bytes(),
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(app));
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );

    // A refused stream tells the listed origin's page why; a publish answer never has CORS.
    let guarded = Server::start(&["--subscribe-jwt", SECRET, "--cors-origins", app]);
    let refused = stream_with(&guarded, "/stream", &[&format!("Origin: {app}")]);
    assert_eq!(status(&refused), 401);
    assert_eq!(header(&refused, "access-control-allow-origin"), Some(app));
    assert_eq!(
        header(&refused, "access-control-allow-credentials"),
        Some("true")
    );
    let publish = guarded.request(
        format!("POST /broadcast HTTP/1.1\r\nOrigin: {app}\r\nContent-Length: 1\r\n\r\nx")
            .as_bytes(),
    );
    assert_eq!(publish.status, 403); // a page on another origin, no publish token
    assert!(publish.header("access-control-allow-origin").is_none());

    // Without the flag, today's `*` and no credentials.
    let open = Server::start(&[]);
    let any = SseClient::connect(open.addr, "/stream", &[&format!("Origin: {app}")]);
    assert_eq!(header(&any, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&any, "access-control-allow-credentials"), None);
}

#[test]
fn the_page_learns_whether_it_may_put_a_token_in_the_url() {
    let meta = |server: &Server| {
        let page = server.request(b"GET / HTTP/1.1\r\n\r\n").text();
        page.contains(r#"<meta name="sse-edge-token-in-query" content="on">"#)
    };
    assert!(!meta(&Server::start(&[])));
    assert!(meta(&Server::start(&[
        "--subscribe-jwt",
        SECRET,
        "--token-in-query"
    ])));
}

// ----- helpers ---------------------------------------------------------------------------

fn pem_text(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// A fresh Ed25519 key: (public SPKI PEM, private PKCS#8 PEM).
fn ed25519_pair() -> (String, String) {
    let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let public = pem_text("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref());
    let private = pem_text("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref());
    (public, private)
}

#[test]
fn a_token_minted_by_the_token_subcommand_opens_a_stream() {
    let mint = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
            .arg("token")
            .args(args)
            .env("SSE_EDGE_TOKEN_KEY", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let server = Server::start(&["--subscribe-jwt", SECRET, "--jwt-audience", "edge"]);
    let token = mint(&["--subscribe", "user/42/*", "--aud", "edge", "--ttl", "600"]);
    let cookie = format!("Cookie: sse_edge_token={token}");
    let ok = stream_with(&server, "/stream?topic=user/42/inbox", &[&cookie]);
    assert_eq!(status(&ok), 200);
    let other = stream_with(&server, "/stream?topic=user/43/inbox", &[&cookie]);
    assert_eq!(status(&other), 403);
    let no_aud = mint(&["--subscribe", "user/42/*"]);
    let c = stream_with(
        &server,
        "/stream?topic=user/42/inbox",
        &[&format!("Cookie: sse_edge_token={no_aud}")],
    );
    assert_eq!(status(&c), 401);
}

#[test]
fn with_jwt_issuer_only_tokens_from_that_issuer_open_streams_or_publish() {
    let server = Server::start(&[
        "--subscribe-jwt",
        SECRET,
        "--publish-jwt",
        SECRET,
        "--jwt-issuer",
        "https://app.example",
    ]);
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let signed = |iss: Option<&str>| {
        let mut claims = json!({
            "exp": now() + 600,
            "sse_edge": {"subscribe": ["news"], "publish": ["news"]},
        });
        if let Some(iss) = iss {
            claims["iss"] = iss.into();
        }
        sign(&claims, &key, Algorithm::HS256, None)
    };
    let ours = signed(Some("https://app.example"));
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    assert_eq!(
        status(&stream_with(
            &server,
            "/stream?topic=news",
            &[&bearer(&ours)]
        )),
        200
    );
    assert_eq!(publish(&server, "news", "x", Some(&ours)).status, 200);
    for other in [signed(Some("https://staging.example")), signed(None)] {
        let c = stream_with(&server, "/stream?topic=news", &[&bearer(&other)]);
        assert_eq!(status(&c), 401);
        assert_eq!(publish(&server, "news", "x", Some(&other)).status, 401);
    }
}
