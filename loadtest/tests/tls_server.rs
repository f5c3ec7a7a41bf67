//! The `loadtest` binary over `https://`, against a tiny TLS SSE server in this test: rustls
//! on one thread per connection, with a CA and a server certificate made here by rcgen.
//! Streams and publishes go over TLS with `--cacert` and with `--insecure`; without either
//! flag, with a bad CA file and with the wrong CA, the run fails and says why.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// A CA called `ca_name` and the server certificate it signed for `names`.
struct Pki {
    /// The CA certificate, PEM, in a file of its own (what `--cacert` takes).
    ca_file: TempFile,
    server: Arc<ServerConfig>,
}

fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA");
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let mut server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        ca_file: TempFile::with(&ca_name.replace(' ', "-"), &ca.pem()),
        server: Arc::new(server),
    }
}

/// A file in the temp directory, removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn with(tag: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("loadtest-{}-{tag}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the server on a loopback port; returns the port.
fn start(config: Arc<ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || serve(listener, config));
    port
}

/// Serves `GET` as an event stream and `POST` as a broadcast of its body to every stream,
/// answered with `{"clients":N}` as sse-edge does; all over TLS.
fn serve(listener: TcpListener, config: Arc<ServerConfig>) {
    let streams: Arc<Mutex<Vec<Tls>>> = Arc::default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (streams, config) = (streams.clone(), config.clone());
        std::thread::spawn(move || {
            let session = ServerConnection::new(config).expect("server session");
            // The handshake happens on the first read; a client that gives up on it (the
            // wrong CA) ends this thread there.
            let mut reader = BufReader::new(StreamOwned::new(session, conn));
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().expect("length");
                    }
                }
                if request_line.starts_with("GET") {
                    // The client sends nothing after its GET, so nothing is left buffered.
                    let mut out = reader.into_inner();
                    // Hold the list while answering: a POST can only follow a head this
                    // stream received, so it finds the stream already listed.
                    let mut all = streams.lock().unwrap();
                    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: hello\n\n")
                        .and_then(|()| out.flush())
                        .expect("head");
                    all.push(out);
                    return;
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                let body = String::from_utf8(body).expect("utf-8");
                let mut all = streams.lock().unwrap();
                for s in all.iter_mut() {
                    let _ = write!(s, "data: {body}\n\n").and_then(|()| s.flush());
                }
                let answer = format!("{{\"clients\":{}}}", all.len());
                drop(all);
                let out = reader.get_mut();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .and_then(|()| out.flush())
                .expect("answer");
            }
        });
    }
}

/// What one run of the binary did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The `--json` summary, when one was written.
    json: Option<serde_json::Value>,
}

/// Runs the loadtest binary with `args` and `--json`, killing it if it overruns.
fn loadtest(args: &[String]) -> Run {
    let json = TempFile::with(&format!("summary-{}", unique()), "");
    let mut all = args.to_vec();
    all.extend(["--json".to_owned(), json.path()]);
    let out = common::run_loadtest(&all);
    let text = std::fs::read_to_string(&json.0).unwrap_or_default();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json: serde_json::from_str(&text).ok(),
    }
}

/// A number no other run in this test process uses (for file names).
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The usual run: `streams` streams and `messages` messages, both over https://.
fn args(port: u16, streams: u64, messages: u64, trust: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &format!("https://127.0.0.1:{port}/events"),
        "--publish-url",
        &format!("https://127.0.0.1:{port}/publish"),
        "--connections",
        &streams.to_string(),
        "--messages",
        &messages.to_string(),
        "--grace",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(trust.iter().map(|s| s.to_string()));
    args
}

/// Every stream and every message arrived, over TLS (`slow` of the streams read only once
/// the publishing was over).
fn assert_everything_arrived(run: &Run, streams: u64, slow: u64, messages: u64) {
    let j = run.json.as_ref().unwrap_or_else(|| {
        panic!(
            "no --json summary\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    assert!(run.status.success(), "{j:#}\nstderr:\n{}", run.stderr);
    assert!(j["url"].as_str().unwrap().starts_with("https://"), "{j:#}");
    assert_eq!(j["connections_established"], streams, "{j:#}");
    assert_eq!(j["connect_errors"], 0, "{j:#}");
    assert_eq!(j["messages_published"], messages, "{j:#}");
    assert_eq!(
        j["deliveries_received"],
        (streams - slow) * messages,
        "{j:#}"
    );
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["slow"]["clients"], slow, "{j:#}");
    assert_eq!(j["slow"]["received"], slow * messages, "{j:#}");
    assert_eq!(j["other_events"], 0, "{j:#}");
    // The publisher's POSTs went over TLS too, and the server saw every stream.
    assert_eq!(j["server_reported_clients"], streams, "{j:#}");
    assert!(j.get("tls_error").is_none(), "{j:#}");
}

#[test]
fn with_cacert_every_tls_stream_gets_every_message() {
    let pki = pki("loadtest test CA", &["localhost", "127.0.0.1"]);
    let port = start(pki.server.clone());
    // Two workers: each builds its TLS configuration from the plan it was sent.
    let mut a = args(port, 60, 10, &["--cacert", &pki.ca_file.path()]);
    a.extend(["--procs".to_owned(), "2".to_owned()]);
    let run = loadtest(&a);
    assert_everything_arrived(&run, 60, 0, 10);
    // Without --streams-per-connection https:// stays HTTP/1.1: a connection per stream.
    let j = run.json.as_ref().unwrap();
    assert_eq!(j["protocol"], "http/1.1", "{j:#}");
    assert_eq!(j["connections"], 60, "{j:#}");
    assert_eq!(j["streams_per_connection"], 1, "{j:#}");
}

#[test]
fn http2_over_tls_fails_in_one_line_when_the_server_does_not_choose_h2() {
    // This server's ALPN offers http/1.1 only.
    let pki = pki("loadtest h1 CA", &["127.0.0.1"]);
    let port = start(pki.server.clone());
    let mut a = args(port, 20, 2, &["--cacert", &pki.ca_file.path()]);
    a.extend(["--streams-per-connection", "10", "--procs", "1"].map(String::from));
    let run = loadtest(&a);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let j = run.json.as_ref().expect("--json written");
    assert_eq!(j["protocol"], "h2", "{j:#}");
    assert_eq!(j["connections"], 2, "{j:#}");
    assert_eq!(j["connections_established"], 0, "{j:#}");
    assert_eq!(j["errors_by_kind"]["tls"], 20, "{j:#}");
    let line = format!(
        "tls          first failure: https://127.0.0.1:{port}/events: the server did not choose \
         HTTP/2 by ALPN (it chose http/1.1): --streams-per-connection needs h2 (without it \
         https:// runs use HTTP/1.1)"
    );
    assert!(run.stdout.contains(&line), "{}", run.stdout);
}

#[test]
fn with_tls_resume_every_stream_after_the_first_resumes_a_session() {
    let pki = pki("loadtest resume CA", &["localhost", "127.0.0.1"]);
    // One stream at a time: each finds the tickets the one before it got with its head.
    let run = |extra: &[&str]| {
        // A server per run: it counts every stream it ever served.
        let port = start(pki.server.clone());
        let mut a = args(port, 20, 2, &["--cacert", &pki.ca_file.path()]);
        a.extend(["--procs", "1", "--max-in-flight", "1"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        loadtest(&a)
    };
    let full = run(&[]);
    assert_everything_arrived(&full, 20, 0, 2);
    assert_eq!(full.json.as_ref().unwrap()["tls_resumed"], 0);
    let resumed = run(&["--tls-resume"]);
    assert_everything_arrived(&resumed, 20, 0, 2);
    assert_eq!(resumed.json.as_ref().unwrap()["tls_resumed"], 19);
    assert!(resumed
        .stdout
        .contains("19 of 20 streams resumed a session"));
}

#[test]
fn with_insecure_a_certificate_nobody_trusts_is_accepted() {
    // Signed by a CA nobody was given, for a name that is not the URL's host.
    let pki = pki("a CA nobody trusts", &["elsewhere.example"]);
    let port = start(pki.server.clone());
    // A quarter of the streams leave their records in the kernel until the drain: a slow
    // TLS reader is read later, without a new edge, like a plain one.
    let mut a = args(port, 40, 10, &["--insecure"]);
    a.extend(["--slow-fraction".to_owned(), "0.25".to_owned()]);
    let run = loadtest(&a);
    assert_everything_arrived(&run, 40, 10, 10);
}

#[test]
fn the_wrong_ca_fails_every_stream_and_post_and_says_why() {
    let server = pki("the server's CA", &["127.0.0.1"]);
    let other = pki("some other CA", &["127.0.0.1"]);
    let port = start(server.server.clone());
    let mut a = args(port, 20, 3, &["--cacert", &other.ca_file.path()]);
    a.extend(["--connect-timeout".to_owned(), "10".to_owned()]);
    let run = loadtest(&a);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let j = run.json.as_ref().expect("--json written");
    assert_eq!(j["connections_established"], 0, "{j:#}");
    assert_eq!(j["connect_errors"], 20, "{j:#}");
    assert_eq!(j["errors_by_kind"]["tls"], 20, "{j:#}");
    assert_eq!(j["messages_published"], 0, "{j:#}");
    assert_eq!(j["publish_errors"]["tls"], 3, "{j:#}");
    let why = j["tls_error"].as_str().expect("tls_error");
    assert!(why.contains("UnknownIssuer"), "{why}");
    assert!(
        run.stdout
            .contains("tls          first failure: invalid peer certificate: UnknownIssuer"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("FAIL: 20 streams failed to connect"),
        "{}",
        run.stdout
    );
}

#[test]
fn without_a_usable_trust_flag_the_run_does_not_start() {
    let refused = |args: &[&str], line: &str| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let run = loadtest(&args);
        assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
        assert_eq!(run.stderr, format!("loadtest: {line}\n"));
        assert!(run.json.is_none());
    };
    // Nothing listens on port 1: none of these gets as far as connecting.
    let https = ["--url", "https://127.0.0.1:1/events", "--connections", "5"];
    let http = ["--url", "http://127.0.0.1:1/events", "--connections", "5"];
    refused(&https, "an https:// URL needs --cacert FILE or --insecure");
    refused(
        &[&http[..], &["--publish-url", "https://127.0.0.1:1/p"]].concat(),
        "an https:// URL needs --cacert FILE or --insecure",
    );
    refused(
        &[&http[..], &["--insecure"]].concat(),
        "--insecure is for https:// URLs, and --url and --publish-url are not https://",
    );
    refused(
        &[
            &http[..],
            &[
                "--publish-url",
                "https://127.0.0.1:1/p",
                "--insecure",
                "--tls-resume",
            ],
        ]
        .concat(),
        "--tls-resume is for an https:// --url",
    );
    refused(
        &[&https[..], &["--cacert", "/nonexistent/ca.pem"]].concat(),
        "--cacert /nonexistent/ca.pem: No such file or directory (os error 2)",
    );
    let not_pem = TempFile::with("not-pem", "hello\n");
    refused(
        &[&https[..], &["--cacert", &not_pem.path()]].concat(),
        &format!("--cacert {}: no PEM CERTIFICATE in it", not_pem.path()),
    );
    // Both flags: clap's own refusal, exit 2 as well.
    let run = loadtest(
        &[&https[..], &["--insecure", "--cacert", "ca.pem"]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
}
