//! The loadtest over HTTP/2: `h2c://` URLs and `--streams-per-connection`, against an h2c
//! server built on sse-edge's own HTTP/2 state machine over loopback (`h2_server`).

use std::path::PathBuf;

mod common;
mod h2_server;

use common::run_loadtest;
use h2_server::H2Server;

fn json_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the loadtest with `args` plus `--json`, returns its exit success and the summary.
fn run(name: &str, args: &[String]) -> (bool, serde_json::Value, String) {
    let json = json_path(name);
    let mut all = args.to_vec();
    all.extend(["--json".to_owned(), json.display().to_string()]);
    let out = run_loadtest(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.success(), summary, text)
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn h2c_streams_share_connections_and_every_message_arrives() {
    let server = H2Server::start(None);
    let (ok, s, text) = run(
        "share.json",
        &args(&format!(
            "--url {} --connections 200 --streams-per-connection 10 --procs 1 \
             --publish-url {} --messages 20 --duration 20",
            server.h2c("/stream"),
            server.http("/broadcast")
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "h2", "{text}");
    assert_eq!(s["streams_per_connection"], 10);
    assert_eq!(s["connections_established"], 200, "{text}");
    assert_eq!(s["connect_errors"], 0);
    assert_eq!(s["messages_published"], 20);
    assert_eq!(s["deliveries_received"], 200 * 20, "{text}");
    assert_eq!(s["deliveries_lost"], 0);
    // 200 streams, 10 to a connection: 20 connections, as the server saw them too (one
    // more for the publisher, which speaks HTTP/1.1).
    assert_eq!(s["connections"], 20, "{text}");
    assert_eq!(server.count(|s| &s.h2_connections), 20);
    assert_eq!(server.count(|s| &s.streams), 200);
    assert_eq!(server.count(|s| &s.max_streams_per_connection), 10);
    assert_eq!(server.count(|s| &s.connections), 21);
    assert!(
        text.contains("h2, 20 connections, 10 streams per connection"),
        "{text}"
    );
}

#[test]
fn h2c_defaults_to_one_stream_per_connection_over_several_workers() {
    let server = H2Server::start(None);
    let (ok, s, text) = run(
        "one.json",
        &args(&format!(
            "--url {} --connections 30 --procs 2 --publish-url {} --messages 5 --duration 20",
            server.h2c("/stream"),
            server.http("/broadcast")
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "h2");
    assert_eq!(s["streams_per_connection"], 1);
    assert_eq!(s["connections"], 30);
    assert_eq!(s["deliveries_received"], 30 * 5, "{text}");
    assert_eq!(server.count(|s| &s.h2_connections), 30);
    assert_eq!(server.count(|s| &s.max_streams_per_connection), 1);
}

#[test]
fn a_storm_over_h2c_serves_every_stream() {
    let server = H2Server::start(None);
    let (ok, s, text) = run(
        "storm.json",
        &args(&format!(
            "--url {} --connections 500 --streams-per-connection 100 --procs 1 --storm \
             --publish-url {} --messages 3 --duration 20",
            server.h2c("/stream"),
            server.http("/broadcast")
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["connections"], 5);
    assert_eq!(s["connections_established"], 500);
    assert_eq!(s["storm_closed"], 0);
    assert_eq!(s["deliveries_received"], 500 * 3, "{text}");
}

#[test]
fn streams_a_goaway_left_unprocessed_come_back_on_new_connections() {
    // The server answers 5 streams per connection, then sends GOAWAY naming the 5th: the
    // other 5 of each connection were not processed and must reconnect elsewhere.
    let server = H2Server::start(Some(5));
    let (ok, s, text) = run(
        "goaway.json",
        &args(&format!(
            "--url {} --connections 40 --streams-per-connection 10 --procs 1 --reconnect \
             --publish-url {} --messages 5 --duration 20",
            server.h2c("/stream"),
            server.http("/broadcast")
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["connections_established"], 40, "{text}");
    assert!(s["h2_goaways"].as_u64().unwrap() >= 4, "{text}");
    assert!(s["h2_goaway_streams"].as_u64().unwrap() >= 20, "{text}");
    assert_eq!(s["deliveries_lost"], 0, "{text}");
    assert_eq!(s["deliveries_received"], 40 * 5, "{text}");
    // 40 streams at 5 a connection: at least 8 connections served them.
    assert!(server.count(|s| &s.h2_connections) >= 8);
    assert_eq!(server.count(|s| &s.max_streams_per_connection), 5);
}

#[test]
fn without_reconnect_a_goaway_fails_the_streams_it_left() {
    let server = H2Server::start(Some(5));
    let (ok, s, text) = run(
        "goaway-fail.json",
        &args(&format!(
            "--url {} --connections 10 --streams-per-connection 10 --procs 1 --duration 2",
            server.h2c("/stream"),
        )),
    );
    assert!(!ok, "{text}");
    assert_eq!(s["connections_established"], 5, "{text}");
    assert_eq!(s["connect_errors"], 5, "{text}");
    assert_eq!(s["errors_by_kind"]["goaway"], 5, "{text}");
}

#[test]
fn http2_flags_are_checked_before_anything_runs() {
    let bad = |line: &str| {
        let out = run_loadtest(&args(line));
        assert_eq!(out.status.code(), Some(2), "{line}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = bad("--url http://127.0.0.1:1/stream --connections 2 --streams-per-connection 2");
    assert!(
        e.contains("needs every --url to be h2c:// or https://"),
        "{e}"
    );
    let e = bad("--url h2c://127.0.0.1:1/stream --connections 2 --slow-fraction 0.5");
    assert!(
        e.contains("--slow-fraction is not supported over HTTP/2"),
        "{e}"
    );
    let e = bad(
        "--url h2c://127.0.0.1:1/stream --connections 2 --publish-url h2c://127.0.0.1:1/b \
         --messages 1",
    );
    assert!(e.contains("publishing is HTTP/1.1"), "{e}");
}

#[test]
fn streams_the_server_ends_come_back_on_their_live_connections() {
    // Every stream is ended (END_STREAM, the connection kept) after its second event; with
    // --reconnect each comes back after its retry: with Last-Event-ID, on the connection it
    // had, and the server replays what it missed.
    let server = H2Server::start_with(h2_server::Options {
        end_after_events: Some(2),
        ..h2_server::Options::default()
    });
    let (ok, s, text) = run(
        "ended.json",
        &args(&format!(
            "--url {} --connections 100 --streams-per-connection 10 --procs 1 --reconnect \
             --publish-url {} --messages 6 --duration 20",
            server.h2c("/stream"),
            server.http("/broadcast")
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["reconnects"], 100, "{text}");
    assert_eq!(s["deliveries_received"], 100 * 6, "{text}");
    assert_eq!(s["deliveries_lost"], 0, "{text}");
    assert_eq!(s["deliveries_duplicated"], 0, "{text}");
    // No new connection: the streams came back on the ten they had.
    assert_eq!(s["connections"], 10, "{text}");
    assert_eq!(server.count(|s| &s.h2_connections), 10);
    assert_eq!(server.count(|s| &s.streams), 200);
}

/// A TLS server configuration with ALPN h2 then http/1.1 for a certificate of 127.0.0.1,
/// and the file of the CA that signed it.
fn tls_config(tag: &str) -> (std::sync::Arc<rustls::ServerConfig>, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::crypto::aws_lc_rs;
    use rustls::pki_types::PrivateKeyDer;

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let ca_file = json_path(&format!("{tag}-ca.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (std::sync::Arc::new(config), ca_file)
}

#[test]
fn https_with_streams_per_connection_speaks_h2_by_alpn() {
    let (config, ca_file) = tls_config("alpn");
    let tls = H2Server::start_with(h2_server::Options {
        tls: Some(config),
        ..h2_server::Options::default()
    });
    // Publishing over plain HTTP/1.1 to a second (plain) server would reach other streams:
    // this one takes its publishes over TLS, HTTP/1.1, on the same port.
    let (ok, s, text) = run(
        "tls.json",
        &args(&format!(
            "--url {} --connections 100 --streams-per-connection 10 --procs 1 \
             --publish-url {} --messages 5 --duration 20 --cacert {}",
            tls.https("/stream"),
            tls.https("/broadcast"),
            ca_file.display()
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "h2", "{text}");
    assert_eq!(s["connections"], 10, "{text}");
    assert_eq!(s["deliveries_received"], 100 * 5, "{text}");
    assert_eq!(s["deliveries_lost"], 0);
    assert_eq!(tls.count(|s| &s.h2_connections), 10);
    assert_eq!(tls.count(|s| &s.max_streams_per_connection), 10);
}

#[test]
fn a_thousand_streams_on_one_tls_connection_all_get_their_requests_out() {
    // 1,000 HEADERS are ~90 KB of plaintext, more than rustls buffers at once: the rest must
    // still leave once the socket takes the first part, with no edge of its own to wait for.
    let (config, ca_file) = tls_config("many");
    let tls = H2Server::start_with(h2_server::Options {
        tls: Some(config),
        ..h2_server::Options::default()
    });
    let (ok, s, text) = run(
        "tls-many.json",
        &args(&format!(
            "--url {} --connections 2000 --streams-per-connection 1000 --procs 1 \
             --publish-url {} --messages 3 --duration 20 --connect-timeout 10 --cacert {}",
            tls.https("/stream"),
            tls.https("/broadcast"),
            ca_file.display()
        )),
    );
    assert!(ok, "{text}");
    assert_eq!(s["connections"], 2, "{text}");
    assert_eq!(s["connections_established"], 2000, "{text}");
    assert_eq!(s["deliveries_received"], 2000 * 3, "{text}");
    assert_eq!(tls.count(|s| &s.max_streams_per_connection), 1000);
}
