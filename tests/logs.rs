//! `--log-format json`: every line the node writes on stderr, through a whole life (start, a
//! stream, a publish, refused requests, a zero-disconnect upgrade, a drain), is one JSON
//! object with `time`, `level`, `target` and `message` first, then the event's fields; a
//! start-up error from the command line stays one plain line.

mod util;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use util::{published_id, Server, PATIENCE};

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Every line as a JSON object, checked for the fixed fields in their order.
fn parse_lines(log: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .map(|line| {
            let object: Map<String, Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}\n{log}"));
            let mut at = 0;
            for key in ["time", "level", "target", "message"] {
                assert!(object[key].is_string(), "{key} in {line}");
                // The fixed fields come first, in this order, whatever the event's are.
                let found = line[at..]
                    .find(&format!("\"{key}\":"))
                    .unwrap_or_else(|| panic!("{key} out of order in {line}"));
                at += found;
            }
            assert!(line.starts_with("{\"time\":\""), "{line}");
            let level = object["level"].as_str().unwrap();
            assert!(
                ["error", "warn", "info", "debug", "trace"].contains(&level),
                "{line}"
            );
            let time = object["time"].as_str().unwrap();
            assert!(
                time.len() >= 20 && time.ends_with('Z') && &time[10..11] == "T",
                "{line}"
            );
            object
        })
        .collect()
}

fn find<'a>(lines: &'a [Map<String, Value>], message: &str) -> &'a Map<String, Value> {
    lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
        .unwrap_or_else(|| panic!("no line with {message:?}: {lines:#?}"))
}

#[test]
fn a_node_logs_one_json_object_per_line_through_start_upgrade_and_drain() {
    let mut old = Server::start(&["--log-format", "json", "--log", "debug", "--shards", "2"]);
    let mut stream = old.stream("/stream");
    published_id(&old.publish("", b"hello"));
    assert_eq!(stream.next_event().data, "hello");
    // Refused: an unknown path, and a topic that is not a name.
    assert_eq!(
        old.request(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").status,
        404
    );
    assert_eq!(old.publish("?topic=no%20spaces", b"x").status, 400);
    old.wait_for_log("request refused");

    // The zero-disconnect upgrade (systemctl reload): the new process logs on the same
    // stderr, in the same format (it inherits the arguments).
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let handed = find(&parse_lines(&log), "upgrade: handed").clone();
    let new_pid = handed["pid"].as_u64().expect("the new pid as a number") as u32;
    assert_eq!(handed["streams"], 1, "{handed:?}");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    published_id(&old.publish("", b"after"));
    assert_eq!(stream.next_event().data, "after");

    // The drain, in the new process.
    // SAFETY: the pid the old process named as its successor, alive until this signal.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the new process did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = old.wait_for_log("shard stopped");
    let lines = parse_lines(&log);
    let listening = find(&lines, "listening on");
    assert!(listening["target"]
        .as_str()
        .unwrap()
        .starts_with("sse_edge"));
    let refused = lines
        .iter()
        .filter(|l| l["message"] == "request refused from its head")
        .collect::<Vec<_>>();
    assert!(
        refused
            .iter()
            .any(|l| l["status"] == 404 && l["reason"].is_string()),
        "{refused:?}"
    );
    assert!(refused.iter().any(|l| l["status"] == 400), "{refused:?}");
    assert_eq!(find(&lines, "upgrade: took over")["streams"], 1);
    assert_eq!(find(&lines, "shutting down")["signal"], libc::SIGTERM);
    assert!(find(&lines, "shard stopped")["shard"].is_u64());
    // Both processes wrote here: one format from the first line to the last.
    assert!(lines.len() >= 8, "{log}");
}

#[test]
fn a_command_line_error_stays_one_plain_line() {
    util::assert_refused_at_start(
        &[
            "--log-format".into(),
            "json".into(),
            "--tick".into(),
            "x".into(),
        ],
        "--tick",
    );
    util::assert_refused_at_start(&["--log-format".into(), "yaml".into()], "yaml");
    // A port in use is found after logging began: still the contract's plain line.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["--log-format", "json", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sse-edge: ") && last.contains("in use"),
        "{stderr}"
    );
    for line in stderr.lines().filter(|l| *l != last) {
        serde_json::from_str::<Map<String, Value>>(line).expect(line);
    }
}
