//! TLS on the edge itself: streams and publishes over TLS with a real TLS client (rustls) and
//! curl, certificate reload on SIGHUP while a stream keeps receiving, plain HTTP to the TLS
//! port, a stalled handshake, unusable files, and close_notify on drain. Certificates are
//! made here (rcgen).

#[path = "util/tls.rs"]
mod tls_util;
mod util;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;
use tls_util::{Cert, Tls};
use util::{Server, PATIENCE};

fn start(cert: &Cert, extra: &[&str]) -> Server {
    let mut args: Vec<String> = cert.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A TLS connection to `server`, handshake done.
fn connect(server: &Server, config: Arc<ClientConfig>) -> io::Result<Tls> {
    tls_util::connect(server.addr, config, PATIENCE)
}

/// An event stream over TLS: the head read and checked, then events one at a time.
struct TlsStream {
    tls: Tls,
    buf: Vec<u8>,
}

impl TlsStream {
    fn open(server: &Server, config: Arc<ClientConfig>, path: &str) -> TlsStream {
        let mut tls = connect(server, config).expect("TLS connect");
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut s = TlsStream {
            tls,
            buf: Vec::new(),
        };
        let head = s.until(b"\r\n\r\n").expect("a response head");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(s.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        s
    }

    /// The text up to `end`, or None if the connection ended cleanly first.
    fn until(&mut self, end: &[u8]) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                let block: Vec<u8> = self.buf.drain(..at + end.len()).collect();
                return Some(String::from_utf8(block).unwrap());
            }
            let mut chunk = [0u8; 4096];
            match self.tls.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("stream read failed: {e}"),
            }
        }
    }

    /// The next event's data line (comments and retry skipped).
    fn next_data(&mut self) -> String {
        loop {
            let block = self.until(b"\n\n").expect("stream ended");
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                return data.to_owned();
            }
        }
    }
}

/// POSTs `body` to `topic` over TLS; returns the whole answer.
fn publish(server: &Server, config: Arc<ClientConfig>, topic: &str, body: &str) -> String {
    let mut tls = connect(server, config).unwrap();
    write!(
        tls,
        "POST /broadcast?topic={topic} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    // A clean close_notify ends the answer: Ok(0), not an error.
    tls.read_to_string(&mut answer)
        .expect("an answer ended by close_notify");
    answer
}

fn metrics(server: &Server, cert: &Cert) -> std::collections::HashMap<String, f64> {
    tls_util::metrics(server.addr, cert.client(), PATIENCE).unwrap()
}

#[test]
fn streams_and_publishes_over_tls_on_two_shards() {
    let dir = util::tempdir("tls-basic");
    let cert = Cert::new(&dir, "a");
    let server = start(&cert, &["--shards", "2"]);
    let mut streams: Vec<TlsStream> = (0..6)
        .map(|_| TlsStream::open(&server, cert.client(), "/stream?topic=news"))
        .collect();
    for i in 0..3 {
        let answer = publish(&server, cert.client(), "news", &format!("event {i}"));
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains("\"clients\":6"), "{answer}");
    }
    for s in &mut streams {
        for i in 0..3 {
            assert_eq!(s.next_data(), format!("event {i}"));
        }
    }
    // A 60 KiB event (under --max-body): several TLS records, one frame.
    let big = "x".repeat(60 * 1024);
    publish(&server, cert.client(), "news", &big);
    for s in &mut streams {
        assert_eq!(s.next_data().len(), big.len());
    }
    let m = metrics(&server, &cert);
    assert!(m["sse_edge_tls_handshakes_total"] >= 11.0, "{m:?}");
    assert_eq!(m["sse_edge_tls_handshake_failures_total"], 0.0);
    assert!(m["sse_edge_tls_certificate_expiry_seconds"] > 1.7e9);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn curl_publishes_over_tls_trusting_the_certificate() {
    let dir = util::tempdir("tls-curl");
    let cert = Cert::new(&dir, "a");
    let server = start(&cert, &[]);
    let mut stream = TlsStream::open(&server, cert.client(), "/stream");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert.cert)
        .args(["--data-binary", "from curl"])
        .arg(format!(
            "https://localhost:{}/broadcast",
            server.addr.port()
        ))
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answer.contains("\"clients\":1"), "{answer}");
    assert_eq!(stream.next_data(), "from curl");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sighup_reloads_the_certificate_while_a_stream_keeps_receiving() {
    let dir = util::tempdir("tls-reload");
    let old = Cert::new(&dir, "old");
    let server = start(&old, &[]);
    let mut kept = TlsStream::open(&server, old.client(), "/stream");
    // Replace the files the server was started with, then SIGHUP.
    let new = Cert::new(&dir, "new");
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("reloaded");
    // A new connection gets the new certificate: trusting only the old one now fails.
    let fresh = connect(&server, new.client()).expect("the new certificate is served");
    assert_eq!(fresh.conn.peer_certificates().unwrap()[0], new.der);
    assert!(connect(&server, old.client()).is_err());
    // The stream opened before the reload goes on.
    publish(&server, new.client(), "default", "after the reload");
    assert_eq!(kept.next_data(), "after the reload");
    // A reload that fails keeps what is in use.
    std::fs::write(&old.key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("keeping the TLS certificate in use");
    assert!(connect(&server, new.client()).is_ok());
    let m = metrics(&server, &new);
    assert_eq!(m["sse_edge_tls_reloads_total"], 1.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plain_http_to_the_tls_port_is_closed_and_counted() {
    let dir = util::tempdir("tls-plain");
    let cert = Cert::new(&dir, "a");
    let server = start(&cert, &[]);
    let mut stream = TlsStream::open(&server, cert.client(), "/stream");
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain
        .write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got); // EOF or reset, after at most an alert
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "plain HTTP answered: {got:?}"
    );
    if let Some(&first) = got.first() {
        assert_eq!(
            first, 0x15,
            "only a TLS alert record may come back: {got:?}"
        );
    }
    publish(&server, cert.client(), "default", "still serving");
    assert_eq!(stream.next_data(), "still serving");
    let m = metrics(&server, &cert);
    assert_eq!(m["sse_edge_tls_handshake_failures_total"], 1.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_stalled_handshake_is_closed_after_the_header_timeout() {
    let dir = util::tempdir("tls-stall");
    let cert = Cert::new(&dir, "a");
    let server = start(&cert, &["--header-timeout", "1"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    // Half a ClientHello's record header, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closed it without answering");
    assert!(opened.elapsed() < PATIENCE);
    let m = metrics(&server, &cert);
    assert_eq!(m["sse_edge_header_timeouts_total"], 1.0);
    assert_eq!(m["sse_edge_tls_handshake_failures_total"], 1.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn drain_ends_tls_streams_with_close_notify() {
    let dir = util::tempdir("tls-drain");
    let cert = Cert::new(&dir, "a");
    let mut server = start(&cert, &[]);
    let mut stream = TlsStream::open(&server, cert.client(), "/stream");
    publish(&server, cert.client(), "default", "last one");
    assert_eq!(stream.next_data(), "last one");
    server.signal(libc::SIGTERM);
    // A clean TLS end: read returns Ok(0) (close_notify), not an unexpected-EOF error.
    assert_eq!(stream.until(b"\n\n"), None);
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unusable_certificate_files_are_one_line_and_exit_2() {
    let dir = util::tempdir("tls-bad");
    let a = Cert::new(&dir, "a");
    let b = Cert::new(&dir, "b");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                "/nonexistent/c.pem".into(),
                "--tls-key".into(),
                a.key.display().to_string(),
            ],
            "/nonexistent/c.pem",
        ),
        (
            vec![
                "--tls-cert".into(),
                a.cert.display().to_string(),
                "--tls-key".into(),
                b.key.display().to_string(),
            ],
            "is not the private key of the certificate in --tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                empty.display().to_string(),
                "--tls-key".into(),
                a.key.display().to_string(),
            ],
            "no certificate",
        ),
        (
            vec!["--tls-cert".into(), a.cert.display().to_string()],
            "--tls-key",
        ),
    ];
    for (args, says) in cases {
        util::assert_refused_at_start(&args, says);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_returning_client_resumes_with_a_session_ticket() {
    let dir = util::tempdir("tls-resume");
    let cert = Cert::new(&dir, "a");
    let server = start(&cert, &[]);
    // One configuration keeps the client's ticket store across connections, as a browser does.
    let config = cert.client();
    let first = TlsStream::open(&server, config.clone(), "/stream");
    assert_eq!(
        first.tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // Tickets arrive after the handshake; the stream head was read after them.
    let second = connect(&server, config).unwrap();
    assert_eq!(
        second.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection skips the certificate and the server's signature"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_upgrade_drains_tls_streams_and_the_new_process_serves_tls() {
    let dir = util::tempdir("tls-upgrade");
    let cert = Cert::new(&dir, "a");
    // Started from a copy the test owns: SIGUSR2 runs the binary at this path.
    let exe = dir.join("sse-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_sse-edge"), &exe).unwrap();
    let args = cert.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut old = Server::start_exe(&exe, &args);
    let mut stream = TlsStream::open(&old, cert.client(), "/stream");
    old.signal(libc::SIGUSR2);
    // A TLS session's keys cannot travel: the stream is not handed over. It ends cleanly
    // (close_notify), and the browser comes back after the jittered retry: it was given.
    let log = old.wait_for_log("upgrade: handed");
    let _new = util::Successor::from_log(&log, "upgrade: handed");
    assert!(log.contains("handed 0 streams"), "{log}");
    let mut retry = None;
    while let Some(block) = stream.until(b"\n\n") {
        retry = retry.or(block
            .lines()
            .find_map(|l| l.strip_prefix("retry: ").map(str::to_owned)));
    }
    assert!(retry.is_some(), "the stream's retry:");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    // The browser comes back to the new process, on the same port, with the same certificate.
    let mut again = TlsStream::open(&old, cert.client(), "/stream");
    publish(&old, cert.client(), "default", "after the upgrade");
    assert_eq!(again.next_data(), "after the upgrade");
    std::fs::remove_dir_all(&dir).ok();
}
