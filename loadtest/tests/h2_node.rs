//! The loadtest over HTTP/2 against the real `sse-edge` binary (`target/<profile>/sse-edge`;
//! build it first with `cargo build --workspace --bins`): h2c with prior knowledge, h2 by ALPN
//! over TLS with a certificate made here, and an https:// run without
//! `--streams-per-connection` staying HTTP/1.1. (A server that does not choose h2 by ALPN:
//! tls_server.rs, whose server offers http/1.1 only.) The node's own /metrics say how many
//! connections and streams it saw.

use std::path::PathBuf;

mod common;
use common::{run_loadtest, Node};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-h2-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the loadtest with `line` and `--json`: exit success, the summary, what it printed.
fn run(name: &str, line: &str) -> (bool, serde_json::Value, String) {
    let json = temp(name);
    let mut args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    args.extend(["--json".to_owned(), json.display().to_string()]);
    let out = run_loadtest(&args);
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

/// A CA (its PEM file, for --cacert) and a certificate and key for 127.0.0.1 it signed
/// (their PEM files, for the node's --tls-cert and --tls-key).
fn pki(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: with rcgen's default for both, curl (OpenSSL) would take the
    // server's certificate for a self-signed one.
    ca.distinguished_name
        .push(DnType::CommonName, format!("loadtest h2 {tag} CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        temp(&format!("{tag}-ca.pem")),
        temp(&format!("{tag}-cert.pem")),
        temp(&format!("{tag}-key.pem")),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_file, cert_file, key_file)
}

#[test]
fn h2c_at_ten_streams_per_connection_delivers_everything_on_a_tenth_of_the_connections() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    let stream = node.url("/stream").replace("http://", "h2c://");
    let (ok, s, text) = run(
        "h2c.json",
        &format!(
            "--url {stream} --connections 500 --streams-per-connection 10 --procs 2 \
             --publish-url {} --messages 10 --duration 20",
            node.url("/broadcast")
        ),
    );
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "h2", "{text}");
    assert_eq!(s["connections_established"], 500, "{text}");
    assert_eq!(s["deliveries_received"], 500 * 10, "{text}");
    assert_eq!(s["deliveries_lost"], 0, "{text}");
    assert_eq!(s["connections"], 50, "{text}");
    // The node saw the same: 50 HTTP/2 connections carrying 500 streams.
    assert_eq!(node.metric("sse_edge_h2_connections_total"), 50.0);
    assert_eq!(node.metric("sse_edge_streams_opened_total"), 500.0);
}

#[test]
fn https_speaks_h2_only_with_streams_per_connection() {
    let (ca, cert, key) = pki("h2");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let url = |path: &str| node.url(path).replace("http://", "https://");
    let line = |extra: &str| {
        format!(
            "--url {} --connections 100 --procs 1 --publish-url {} --messages 5 \
             --duration 20 --cacert {} {extra}",
            url("/stream"),
            url("/broadcast"),
            ca.display()
        )
    };

    let (ok, s, text) = run("tls-h2.json", &line("--streams-per-connection 10"));
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "h2", "{text}");
    assert_eq!(s["connections"], 10, "{text}");
    assert_eq!(s["deliveries_received"], 100 * 5, "{text}");
    assert_eq!(s["deliveries_lost"], 0, "{text}");
    assert_eq!(
        tls_metric(&node, &ca, "sse_edge_h2_connections_total"),
        10.0
    );

    // The same without the flag: HTTP/1.1 over TLS, a connection per stream, as before.
    let (ok, s, text) = run("tls-h1.json", &line(""));
    assert!(ok, "{text}");
    assert_eq!(s["protocol"], "http/1.1", "{text}");
    assert_eq!(s["connections"], 100, "{text}");
    assert_eq!(s["deliveries_received"], 100 * 5, "{text}");
    assert_eq!(
        tls_metric(&node, &ca, "sse_edge_h2_connections_total"),
        10.0
    );
    assert_eq!(
        tls_metric(&node, &ca, "sse_edge_streams_opened_total"),
        200.0
    );
}

/// One metric of a TLS node (summed over its labels), read with curl over HTTP/1.1.
fn tls_metric(node: &Node, ca: &std::path::Path, name: &str) -> f64 {
    let out = std::process::Command::new("curl")
        .args(["-s", "--http1.1", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(node.url("/metrics").replace("http://", "https://"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# TYPE"), "no metrics from the node: {text}");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
