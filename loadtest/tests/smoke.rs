//! The real `loadtest` binary against the real `sse-edge` server on loopback.
//!
//! The server binary is the workspace's own build, found next to this test's `deps/`
//! directory (`target/<profile>/sse-edge`); the README's test command builds it first with
//! `cargo build --workspace --bins`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{KillOnDrop, RUN_LIMIT};

/// A running sse-edge on a loopback port chosen by the kernel.
struct Server {
    process: KillOnDrop,
    port: u16,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts it with `extra` flags.
    fn start_with(extra: &[&str]) -> Server {
        // The tests share this process; its streams' peers are in other processes, but its
        // own pipes and sockets still count.
        loadtest::fdlimit::raise_to_hard_limit().expect("raise the open-files limit");
        let exe = server_binary();
        let mut child = Command::new(&exe)
            .args(["--listen", "127.0.0.1:0", "--tick", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = child.stderr.take().expect("piped");
        let process = KillOnDrop(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the port is known, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = listening_port(&line) {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sse-edge did not log `listening on 127.0.0.1:PORT` within 30 s");
        Server { process, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `target/<profile>/sse-edge`, beside the `deps/` directory this test runs from.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let server = profile_dir.join(format!("sse-edge{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.exists(),
        "{} is missing: build the server first with `cargo build --workspace --bins` \
         (the README's test command does), then run `cargo test --workspace`",
        server.display()
    );
    server
}

/// Runs the loadtest binary with `args`, killing it if it overruns.
fn loadtest(args: &[String]) -> Output {
    common::run_loadtest(args)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadtest-{}-{name}", std::process::id()))
}

fn read_json(path: &PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("--json file written");
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("--json is JSON")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn two_thousand_streams_over_two_workers_lose_nothing() {
    let server = Server::start();
    let json = temp_path("smoke.json");
    let hgrm = temp_path("smoke.hgrm");
    let mut args = strings(&["--connections", "2000", "--procs", "2", "--messages", "50"]);
    args.extend([
        "--url".into(),
        server.url("/stream?topic=smoke"),
        "--publish-url".into(),
        server.url("/broadcast?topic=smoke"),
        "--server-pid".into(),
        server.pid().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--hgrm".into(),
        hgrm.display().to_string(),
    ]);
    let out = loadtest(&args);
    assert!(out.status.success(), "{}", describe(&out));
    let j = read_json(&json);
    assert_eq!(j["connections_requested"], 2000, "{j:#}");
    assert_eq!(j["connections_established"], 2000, "{j:#}");
    assert_eq!(j["connect_errors"], 0, "{j:#}");
    assert_eq!(j["messages_published"], 50, "{j:#}");
    assert_eq!(j["deliveries_expected"], 100_000, "{j:#}");
    assert_eq!(j["deliveries_received"], 100_000, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["procs"], 2);
    assert_eq!(j["server_reported_clients"], 2000);
    assert_eq!(j["passed"], true);
    let latency = &j["latency_us"];
    let p = |name: &str| {
        latency[name]
            .as_u64()
            .unwrap_or_else(|| panic!("latency_us.{name}"))
    };
    assert!(p("p50") >= 1 && p("p50") <= p("p90") && p("p90") <= p("p99"));
    assert!(p("p99") <= p("p999") && p("p999") <= p("max"));
    assert_eq!(latency["count"], 100_000);
    // One completion per message, across both workers: at least the slowest delivery of it.
    let completion = &j["broadcast_completion_us"];
    assert_eq!(completion["count"], 50, "{j:#}");
    assert!(completion["p50"].as_u64().unwrap() >= p("p50"));
    assert_eq!(
        completion["max"], latency["max"],
        "the slowest delivery ends some broadcast"
    );
    assert!(j["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    assert!(j["server_rss_bytes"].as_u64().unwrap() > 0);
    assert!(j["server_bytes_per_conn"].as_f64().is_some());
    assert!(j["server_cpu_ns_per_delivery"].as_f64().is_some());
    assert_eq!(j["server_processes"], 1, "{j:#}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("result       PASS"), "{table}");
    let hgrm_text = std::fs::read_to_string(&hgrm).expect("--hgrm file written");
    let _ = std::fs::remove_file(&hgrm);
    assert!(hgrm_text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm_text.contains("Total count    =       100000]"));
}

#[test]
fn closed_loop_mode_and_slow_readers_against_the_real_server() {
    let server = Server::start();
    let json = temp_path("closed.json");
    let mut args = strings(&[
        "--connections",
        "300",
        "--procs",
        "1",
        "--messages",
        "20",
        "--publish-mode",
        "closed-loop",
        "--slow-fraction",
        "0.1",
    ]);
    args.extend([
        "--url".into(),
        server.url("/stream"),
        "--publish-url".into(),
        server.url("/broadcast"),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = loadtest(&args);
    assert!(out.status.success(), "{}", describe(&out));
    let j = read_json(&json);
    assert_eq!(j["connections_established"], 300, "{j:#}");
    assert_eq!(j["slow"]["clients"], 30, "{j:#}");
    // 270 fast readers × 20 messages, each paired with its POST.
    assert_eq!(j["deliveries_expected"], 5400, "{j:#}");
    assert_eq!(j["deliveries_received"], 5400, "{j:#}");
    assert_eq!(j["latency_us"]["count"], 5400, "{j:#}");
    // 20 small messages fit the server's per-client buffer: slow readers get them on drain.
    assert_eq!(j["slow"]["received"], 600, "{j:#}");
}

#[test]
fn four_publishing_connections_deliver_every_message_once_to_every_stream() {
    let server = Server::start_with(&["--shards", "2"]);
    let json = temp_path("publishers.json");
    // 100/s for 2 s: 200 messages, each on connection k mod 4.
    let mut args = strings(&[
        "--connections",
        "400",
        "--procs",
        "2",
        "--rate",
        "100",
        "--duration",
        "2",
        "--publishers",
        "4",
    ]);
    args.extend([
        "--url".into(),
        server.url("/stream?topic=lanes"),
        "--publish-url".into(),
        server.url("/broadcast?topic=lanes"),
        "--server-pid".into(),
        server.pid().to_string(),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = loadtest(&args);
    assert!(out.status.success(), "{}", describe(&out));
    let j = read_json(&json);
    let _ = std::fs::remove_file(&json);
    assert_eq!(j["publishers"], 4, "{j:#}");
    assert_eq!(j["messages_published"], 200, "{j:#}");
    assert_eq!(j["publish_errors"], serde_json::json!({}), "{j:#}");
    assert_eq!(
        events_published(&server),
        200,
        "the server saw each POST once"
    );
    // Every stream saw each message exactly once: nothing lost, nothing twice.
    assert_eq!(j["connections_established"], 400, "{j:#}");
    assert_eq!(j["deliveries_expected"], 80_000, "{j:#}");
    assert_eq!(j["deliveries_received"], 80_000, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["duplicates"], 0, "{j:#}");
    assert_eq!(j["other_events"], 0, "{j:#}");
    assert_eq!(j["latency_us"]["count"], 80_000, "{j:#}");
    assert_eq!(j["broadcast_completion_us"]["count"], 200, "{j:#}");
    assert_eq!(j["server_processes"], 1, "{j:#}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("stamped, 4 publishers)"), "{table}");
    assert!(table.contains("result       PASS"), "{table}");
}

#[test]
fn refused_streams_are_counted_by_kind_and_fail_the_run() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let json = temp_path("refused.json");
    let args = strings(&[
        "--url",
        &format!("http://127.0.0.1:{port}/stream"),
        "--connections",
        "20",
        "--duration",
        "0.1",
        "--json",
        &json.display().to_string(),
    ]);
    let out = loadtest(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let j = read_json(&json);
    assert_eq!(j["connect_errors"], 20, "{j:#}");
    assert_eq!(j["errors_by_kind"]["refused"], 20, "{j:#}");
    assert_eq!(j["passed"], false);
    // --allow-loss turns the same run into a success.
    let mut allowed = args.clone();
    allowed.push("--allow-loss".into());
    let out = loadtest(&allowed);
    assert!(out.status.success(), "{}", describe(&out));
    let _ = std::fs::remove_file(&json);
}

/// Events the server has published so far, from its `/metrics`.
fn events_published(server: &Server) -> u64 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.lines()
        .filter(|l| l.starts_with("sse_edge_events_published_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[test]
fn ctrl_c_prints_what_it_has_so_far() {
    let server = Server::start();
    let json = temp_path("interrupted.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(strings(&[
            "--url",
            &server.url("/stream"),
            "--connections",
            "50",
            "--publish-url",
            &server.url("/broadcast"),
            "--rate",
            "20",
            "--duration",
            "600",
            "--json",
            &json.display().to_string(),
            "--no-progress",
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loadtest");
    let mut stdout = child.stdout.take().expect("piped");
    let mut guard = KillOnDrop(child);
    // Interrupt once publishing is well under way.
    let deadline = Instant::now() + RUN_LIMIT;
    while events_published(&server) < 10 {
        assert!(Instant::now() < deadline, "loadtest never published");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signals a child process we own.
    unsafe { libc::kill(guard.0.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "loadtest ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut table = String::new();
    stdout.read_to_string(&mut table).expect("stdout");
    assert_eq!(status.code(), Some(130), "{table}");
    assert!(table.contains("deliveries"), "the table so far: {table}");
    let j = read_json(&json);
    assert_eq!(j["interrupted"], true);
    assert!(j["messages_published"].as_u64().unwrap() >= 10, "{j:#}");
    assert!(
        j["deliveries_received"].as_u64().unwrap() >= 10 * 50,
        "{j:#}"
    );
}

#[test]
fn header_flags_carry_tokens_to_a_node_that_needs_them() {
    const SECRET: &str = "loadtest-secret-loadtest-secret-00";
    let server = Server::start_with(&["--subscribe-jwt", SECRET, "--publish-jwt", SECRET]);
    let mint = |grant: &str| {
        let out = Command::new(server_binary())
            .args(["token", grant, "smoke", "--ttl", "600"])
            .env("SSE_EDGE_TOKEN_KEY", SECRET)
            .output()
            .expect("sse-edge token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let json = temp_path("tokens.json");
    let mut args = strings(&["--connections", "200", "--messages", "10"]);
    args.extend([
        "--url".into(),
        server.url("/stream?topic=smoke"),
        "--publish-url".into(),
        server.url("/broadcast?topic=smoke"),
        "--header".into(),
        format!("Cookie: sse_edge_token={}", mint("--subscribe")),
        "--publish-header".into(),
        format!("Authorization: Bearer {}", mint("--publish")),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = loadtest(&args);
    assert!(out.status.success(), "{}", describe(&out));
    let j = read_json(&json);
    assert_eq!(j["connections_established"], 200, "{j:#}");
    assert_eq!(j["deliveries_received"], 2000, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");

    // Without them the node refuses both: streams fail to connect.
    let out = loadtest(&strings(&[
        "--connections",
        "5",
        "--duration",
        "1",
        "--url",
        &server.url("/stream?topic=smoke"),
    ]));
    assert!(!out.status.success(), "{}", describe(&out));
}
