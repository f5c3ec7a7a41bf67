//! A real Prometheus (Debian's `prometheus`, `--no-install-recommends`) scrapes a real node:
//! its own process on a free loopback port with its own storage directory and
//! configuration (never the package's daemon or its :9090), the node idle (`--tick 0
//! --keepalive 0`: its figures stand still) with TLS and Redis so that every metric exists.
//! Then, through Prometheus's HTTP API: the figures it holds are the node's; every metric
//! name `deploy/prometheus/alerts.yml` and `deploy/grafana/sse-edge.json` use is one the node
//! exports; every panel's query, its variables substituted, runs without error and returns
//! data; the alert rules load, evaluate cleanly, and none fires for a healthy node. No
//! Grafana runs here: this is what keeps the dashboard from drifting from the code.

#[path = "util/redis.rs"]
mod redis_util;
#[path = "util/tls.rs"]
mod tls_util;
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_util::RedisServer;
use serde_json::Value;
use util::{Server, PATIENCE};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `prometheus` binary; a missing one fails the test (scripts/test.sh installs it),
/// unless `SSE_EDGE_DEPLOY_TOOLS=skip`.
fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() && std::env::var("SSE_EDGE_DEPLOY_TOOLS").as_deref() == Ok("skip") {
        eprintln!("skipped: no prometheus (Debian package prometheus)");
        return None;
    }
    Some(found.expect(
        "no prometheus: apt-get install --no-install-recommends prometheus (scripts/test.sh does)",
    ))
}

/// Our own Prometheus process, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &PathBuf, dir: &std::path::Path, config: &str) -> Prometheus {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .current_dir(dir)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    /// GET `path_and_query` from the HTTP API: the JSON body, or None if not answered yet.
    fn get(&self, path_and_query: &str) -> Option<Value> {
        let mut sock = TcpStream::connect(self.addr).ok()?;
        sock.set_read_timeout(Some(PATIENCE)).ok()?;
        write!(
            sock,
            "GET {path_and_query} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut text = String::new();
        sock.read_to_string(&mut text).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// Runs an instant query; panics on an error answer.
    fn query(&self, promql: &str) -> Vec<Value> {
        let answer = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .unwrap_or_else(|| panic!("no answer to {promql}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {answer}"))
            .clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.log.with_file_name("prometheus.err"))
                .unwrap_or_default()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls until `cond` holds, for at most twice [`PATIENCE`] (Prometheus starts, then scrapes).
fn wait_for(what: &str, prometheus: &Prometheus, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + 2 * PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; Prometheus said:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's samples: `name` and its labels (sorted) → value.
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
            labels.sort();
            ((name.to_owned(), labels.join(",")), value.parse().unwrap())
        })
        .collect()
}

/// A Prometheus result's labels as the node wrote them (less the target's instance and job).
fn node_labels(metric: &Value) -> (String, String) {
    let map = metric.as_object().unwrap();
    let mut labels: Vec<String> = map
        .iter()
        .filter(|(k, _)| !["__name__", "instance", "job"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap()))
        .collect();
    labels.sort();
    (
        map["__name__"].as_str().unwrap().to_owned(),
        labels.join(","),
    )
}

/// Metric names (`sse_edge_*`, `process_*`) a text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["sse_edge_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// A stream over TLS, read until `events` events arrived.
fn tls_stream(node: SocketAddr, cert: &tls_util::Cert) -> tls_util::Tls {
    let mut tls = tls_util::connect(node, cert.client(), PATIENCE).unwrap();
    write!(tls, "GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    tls
}

fn read_events(tls: &mut tls_util::Tls, events: usize) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("\ndata: ").count() < events {
        let n = tls.read(&mut buf).expect("stream bytes");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

fn publish(node: SocketAddr, cert: &tls_util::Cert, body: &str) {
    let mut tls = tls_util::connect(node, cert.client(), PATIENCE).unwrap();
    write!(
        tls,
        "POST /broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

fn node_metrics_text(node: SocketAddr, cert: &tls_util::Cert) -> String {
    let mut tls = tls_util::connect(node, cert.client(), PATIENCE).unwrap();
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn a_real_prometheus_holds_the_nodes_figures_and_answers_every_alert_and_panel_query() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    const EVENTS: usize = 5;
    let dir = util::tempdir("prometheus");
    let _ = std::fs::remove_dir_all(dir.join("data"));
    let redis = RedisServer::start();
    let cert = tls_util::Cert::new(&dir, "node");
    let mut args = cert.args();
    args.extend(["--redis", &redis.url(), "--shards", "2", "--keepalive", "0"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Server::start(&args);
    let addr = node.addr;
    let deadline = Instant::now() + PATIENCE;
    while !node_metrics_text(addr, &cert).contains("\nsse_edge_broker_up 1\n") {
        assert!(Instant::now() < deadline, "the broker never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Some traffic first, so the figures compared are not all zero; then the node is idle.
    let mut streams: Vec<_> = (0..3).map(|_| tls_stream(addr, &cert)).collect();
    let deadline = Instant::now() + PATIENCE;
    while samples(&node_metrics_text(addr, &cert))
        .iter()
        .filter(|((n, _), _)| n == "sse_edge_clients")
        .map(|(_, v)| v)
        .sum::<f64>()
        < 3.0
    {
        assert!(Instant::now() < deadline, "the streams never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..EVENTS {
        publish(addr, &cert, &format!("event {i}"));
    }
    for s in &mut streams {
        read_events(s, EVENTS);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = samples(&node_metrics_text(addr, &cert));
        let sum = |name: &str| -> f64 {
            m.iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, v)| v)
                .sum()
        };
        if sum("sse_edge_frames_queued_total") == (3 * EVENTS) as f64
            && sum("sse_edge_fanout_seconds_count") >= EVENTS as f64
            && sum("sse_edge_fanout_first_seconds_count") == sum("sse_edge_fanout_seconds_count")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fan-out never settled: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let rules = repo().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: sse-edge\n    scheme: https\n    tls_config:\n      \
         ca_file: {ca}\n      server_name: localhost\n    static_configs:\n      \
         - targets: ['{addr}']\n",
        rules = rules.display(),
        ca = cert.cert.display(),
    );
    let prometheus = Prometheus::start(&binary, &dir, &config);
    // Enough scrapes in the last minute for every rate() over [1m] to have two points.
    wait_for("three scrapes of the node", &prometheus, || {
        prometheus
            .get(&format!(
                "/api/v1/query?query={}",
                encode(
                    "count_over_time(up{job=\"sse-edge\"}[1m]) >= 3 and up{job=\"sse-edge\"} == 1"
                )
            ))
            .is_some_and(|a| a["data"]["result"].as_array().is_some_and(|r| r.len() == 1))
    });

    // The figures Prometheus holds are what the node serves (the node is idle: scrapes and
    // their TLS handshakes move only the byte, frame, connection and handshake counters).
    let served_text = node_metrics_text(addr, &cert);
    let served = samples(&served_text);
    let moving = [
        "sse_edge_bytes_written_total",
        "sse_edge_frames_written_total",
        "sse_edge_connections",
        "sse_edge_request_connections",
        "sse_edge_request_connections_peak",
        "sse_edge_tls_handshakes_total",
        "sse_edge_accepted_per_turn_max",
        "sse_edge_broker_lag_seconds",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ];
    let mut compared = 0;
    let families: BTreeSet<&str> = served.keys().map(|(n, _)| n.as_str()).collect();
    for family in &families {
        let held: BTreeMap<(String, String), f64> = prometheus
            .query(&format!("{family}{{job=\"sse-edge\"}}"))
            .iter()
            .map(|r| {
                let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                (node_labels(&r["metric"]), value)
            })
            .collect();
        let ours: BTreeMap<_, _> = served
            .iter()
            .filter(|((n, _), _)| n == family)
            .map(|((n, l), v)| ((n.clone(), l.clone()), *v))
            .collect();
        assert_eq!(
            held.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{family}: the series Prometheus holds are the node's"
        );
        if moving.contains(family) {
            continue;
        }
        for (key, value) in &ours {
            let got = held[key];
            assert!(
                got == *value || (got - value).abs() <= 1e-9 * value.abs(),
                "{key:?}: Prometheus holds {got}, the node serves {value}"
            );
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} series compared");
    let fanout: f64 = prometheus
        .query("sum(sse_edge_fanout_seconds_count)")
        .first()
        .map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert!(fanout >= EVENTS as f64, "{fanout}");

    // Every metric the alert rules and the dashboard name is one the node exports.
    // A sample's name, or a histogram's family (which prose names).
    let exported: BTreeSet<String> = served
        .keys()
        .map(|(n, _)| n.clone())
        .chain(
            served_text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_owned),
        )
        .collect();
    let alerts = std::fs::read_to_string(&rules).unwrap();
    let dashboard_text =
        std::fs::read_to_string(repo().join("deploy/grafana/sse-edge.json")).unwrap();
    for (file, text) in [("alerts.yml", &alerts), ("sse-edge.json", &dashboard_text)] {
        let used = metric_names(text);
        assert!(used.len() > 10, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the node does not export: {unknown:?}"
        );
    }

    // The node selector finds the node, and every panel's query answers with data.
    let instance = addr.to_string();
    let values = prometheus
        .get(&format!(
            "/api/v1/label/instance/values?{}",
            encode_pair("match[]", "sse_edge_clients")
        ))
        .unwrap();
    assert_eq!(values["data"], serde_json::json!([instance]), "{values}");
    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    let variable = &dashboard["templating"]["list"][1];
    assert_eq!(variable["name"], "instance");
    assert_eq!(
        variable["query"]["query"],
        "label_values(sse_edge_clients, instance)"
    );
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$instance", &instance)
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            let result = prometheus.query(&expr);
            assert!(
                !result.is_empty(),
                "panel {:?}: {expr} returned no data",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries}");

    // The rules loaded and evaluate without error; a healthy node raises none of them.
    wait_for("every rule evaluated", &prometheus, || {
        prometheus.get("/api/v1/rules").is_some_and(|a| {
            let rules: Vec<&Value> = a["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            rules.len() == alert_count(&alerts) && rules.iter().all(|r| r["health"] == "ok")
        })
    });
    let answer = prometheus.get("/api/v1/rules").unwrap();
    for group in answer["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["lastError"].as_str().unwrap_or(""), "", "{rule}");
            assert_eq!(rule["state"], "inactive", "{rule}");
        }
    }
    drop(prometheus);
    drop(streams);
    std::fs::remove_dir_all(&dir).ok();
}

fn alert_count(rules: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert: "))
        .count()
}

fn encode_pair(key: &str, value: &str) -> String {
    format!("{}={}", encode(key), encode(value))
}
