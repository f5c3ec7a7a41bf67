//! README.md and the binary say the same thing, both ways: the "Configuration" table lists
//! exactly the flags `sse-edge --help` documents, and the "Metrics" section names exactly the
//! metrics that `/metrics` shows on a node with TLS and Redis (every condition on), so that
//! neither can drift again. (`scripts/readme-check.sh` runs the README's examples.)

#[path = "util/redis.rs"]
mod redis_util;
mod util;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use redis_util::RedisServer;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use util::{Server, PATIENCE};

/// Flags `--help` shows that the table leaves out, and why.
const HELP_ONLY: &[(&str, &str)] = &[
    (
        "--help",
        "clap's own; the Configuration section's text names it",
    ),
    ("--version", "clap's own; prints the version and exits"),
];

/// Metrics the README lists that a node with TLS and Redis need not show, and why. Every
/// metric of the code shows on such a node today; one that appears only under another
/// condition (a panic, an upgrade in progress, ...) goes here with that condition.
const CONDITIONAL: &[(&str, &str)] = &[];

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    std::fs::read_to_string(path).expect("read README.md")
}

/// The lines of the section headed `title` (any level), up to the next heading of the same
/// level or above; fenced blocks are skipped, so a `#` comment in one is not a heading.
fn section(text: &str, title: &str) -> String {
    let mut level = None;
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let heading = (!fenced && line.starts_with('#'))
            .then(|| line.chars().take_while(|&c| c == '#').count())
            .filter(|&n| line[n..].starts_with(' '));
        match (level, heading) {
            (None, Some(n)) if line[n..].trim() == title => level = Some(n),
            (Some(l), Some(n)) if n <= l => break,
            (Some(_), _) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    assert!(level.is_some(), "README.md has no section {title:?}");
    out
}

/// The flags in the first column of the section's table (`| `--flag ARG` | ...`).
fn table_flags(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .map(flag_name)
        .collect()
}

/// `--NAME` from what follows a flag's `--` (`listen ADDR` …).
fn flag_name(rest: &str) -> String {
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("--{name}")
}

/// The long flags `sse-edge --help` documents (each option's first line).
fn help_flags() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .arg("--help")
        .output()
        .expect("run sse-edge --help");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim_start)
        .filter_map(|l| {
            let l = l
                .strip_prefix("-")
                .and_then(|l| l.split_once(", "))
                .map_or(l, |(_, r)| r);
            l.strip_prefix("--")
        })
        .map(flag_name)
        .collect()
}

/// Metric names in backquotes (`sse_edge_...`, `process_...`, labels dropped).
fn listed_metrics(section: &str) -> BTreeSet<String> {
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.starts_with("sse_edge_") || t.starts_with("process_"))
        .map(|t| t.split('{').next().unwrap_or(t))
        .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_owned)
        .collect()
}

/// The families `/metrics` declares (`# TYPE name kind`).
fn exposed_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn differences(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn the_configuration_table_and_help_list_the_same_flags() {
    let table = table_flags(&section(&readme(), "Configuration"));
    let help = help_flags();
    assert!(table.contains("--listen") && help.contains("--listen"));
    let help_only: BTreeSet<String> = HELP_ONLY.iter().map(|(f, _)| f.to_string()).collect();
    let missing_in_readme = differences(&help, &table);
    let missing_in_readme: Vec<_> = missing_in_readme
        .into_iter()
        .filter(|f| !help_only.contains(f))
        .collect();
    let missing_in_help = differences(&table, &help);
    assert!(
        missing_in_readme.is_empty() && missing_in_help.is_empty(),
        "--help has flags the README's Configuration table lacks: {missing_in_readme:?}; \
         the table has flags --help lacks: {missing_in_help:?}"
    );
}

/// A certificate for localhost, and a TLS client that trusts only it.
fn certificate(dir: &std::path::Path) -> (Vec<String>, Arc<ClientConfig>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let args = vec![
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
    ];
    (args, Arc::new(client))
}

/// `GET /metrics` over TLS: the body.
fn metrics_over_tls(server: &Server, client: &Arc<ClientConfig>) -> String {
    let sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_owned()
}

#[test]
fn the_metrics_section_names_what_a_node_with_tls_and_redis_exposes() {
    let redis = RedisServer::start();
    let dir = util::tempdir("readme-metrics");
    let (mut args, client) = certificate(&dir);
    args.extend(["--redis".to_owned(), redis.url()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    // Every condition on: TLS in use, and the broker connected (its figures are there from
    // the start, but the node is only wholly what the README describes once Redis answers).
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = metrics_over_tls(&server, &client);
        if text.lines().any(|l| l == "sse_edge_broker_up 1") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never came up:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let exposed = exposed_metrics(&text);
    let listed = listed_metrics(&section(&readme(), "Metrics"));
    assert!(
        exposed.contains("sse_edge_tls_certificate_expiry_seconds"),
        "{text}"
    );
    assert!(exposed.contains("sse_edge_broker_up"), "{text}");
    let conditional: BTreeSet<String> = CONDITIONAL.iter().map(|(m, _)| m.to_string()).collect();
    let missing_in_readme = differences(&exposed, &listed);
    let missing_on_node: Vec<_> = differences(&listed, &exposed)
        .into_iter()
        .filter(|m| !conditional.contains(m))
        .collect();
    assert!(
        missing_in_readme.is_empty() && missing_on_node.is_empty(),
        "/metrics shows metrics the README's Metrics section does not name: \
         {missing_in_readme:?}; the section names metrics this node does not show: \
         {missing_on_node:?}"
    );
}

#[test]
fn the_readers_find_what_the_comparison_reads() {
    // The parsers above, on the shapes the README uses: a table row with an argument, a
    // metric with a label, prose around both, and a heading inside a fenced block.
    let text = "## Configuration\n\n| flag | default |\n|---|---|\n| `--shards N\\|auto` | `1` |\n\
                | `--reuse-port` | off |\n\n```sh\n# not a heading\n```\n## Next\n| `--nope` |\n";
    let flags = table_flags(&section(text, "Configuration"));
    assert_eq!(
        flags,
        BTreeSet::from(["--shards".into(), "--reuse-port".into()])
    );
    let prose =
        "Per shard: `sse_edge_clients` (open), `sse_edge_rejected_requests_total{status}`, \
                 `--max-clients`, `process_resident_memory_bytes`.";
    assert_eq!(
        listed_metrics(prose),
        BTreeSet::from([
            "sse_edge_clients".into(),
            "sse_edge_rejected_requests_total".into(),
            "process_resident_memory_bytes".into(),
        ])
    );
    let exposition = "# HELP a_total x\n# TYPE a_total counter\na_total{shard=\"0\"} 1\n";
    assert_eq!(
        exposed_metrics(exposition),
        BTreeSet::from(["a_total".into()])
    );
}
