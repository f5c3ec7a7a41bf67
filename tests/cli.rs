//! The command line and process behaviour: exit codes, one-line errors, env, timers, signals.

mod util;

use std::process::Command;

use util::{heartbeat_number, published_id, Server};

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sse-edge"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sse-edge")
}

fn assert_one_line_exit_2(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} in {stderr:?}");
}

#[test]
fn port_in_use_is_one_line_and_exit_2() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    // At the default log level: no line comes before the error.
    let out = run(&["--listen", &addr], &[]);
    assert_one_line_exit_2(&out, "already in use");
    let out = run(&["--listen", &addr, "--shards", "2"], &[]);
    assert_one_line_exit_2(&out, "already in use");
}

#[test]
fn bad_flags_and_values_are_one_line_and_exit_2() {
    assert_one_line_exit_2(&run(&["--tick", "soon"], &[]), "--tick");
    assert_one_line_exit_2(&run(&["--bogus"], &[]), "--bogus");
    assert_one_line_exit_2(&run(&["--listen", "localhost"], &[]), "--listen");
    assert_one_line_exit_2(&run(&["--client-buffer", "1"], &[]), "--client-buffer");
    assert_one_line_exit_2(&run(&["--log", "[[["], &[]), "--log");
    assert_one_line_exit_2(&run(&[], &[("SSE_EDGE_MAX_BODY", "lots")]), "--max-body");
}

#[test]
fn help_documents_every_flag() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--shards",
        "--reuse-port",
        "--tick",
        "--keepalive",
        "--client-buffer",
        "--retry-ms",
        "--max-body",
        "--header-timeout",
        "--log",
        "SSE_EDGE_LISTEN",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
}

#[test]
fn help_is_a_subcommand_too_and_the_usage_names_every_subcommand() {
    let flag = run(&["--help"], &[]);
    let word = run(&["help"], &[]);
    assert_eq!(word.status.code(), Some(0), "{word:?}");
    assert_eq!(
        word.stdout, flag.stdout,
        "`sse-edge help` prints what --help does"
    );
    let help = String::from_utf8_lossy(&flag.stdout);
    let usage: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Usage:"))
        .take_while(|l| !l.is_empty())
        .collect();
    for sub in ["sse-edge token", "sse-edge upgrade", "sse-edge help"] {
        assert!(usage.iter().any(|l| l.contains(sub)), "{sub} in {usage:?}");
    }
    // A subcommand's help, by either spelling.
    for sub in ["token", "upgrade"] {
        let by_word = run(&["help", sub], &[]);
        assert_eq!(by_word.status.code(), Some(0), "{by_word:?}");
        assert_eq!(by_word.stdout, run(&[sub, "--help"], &[]).stdout);
    }
    assert_one_line_exit_2(&run(&["help", "nope"], &[]), "help token");
    // --publish-allow is ignored with either kind of publish token, and says so.
    let allow = help
        .split("--publish-allow <CIDRS>")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    assert!(
        allow.contains("--publish-token") && allow.contains("--publish-jwt"),
        "{allow}"
    );
}

#[test]
fn environment_sets_flags_and_the_demo_ticker_runs() {
    // No flags at all: the address and the ticker come from the environment only.
    let server = Server::start_env(&[("SSE_EDGE_LISTEN", "127.0.0.1:0"), ("SSE_EDGE_TICK", "1")]);
    let mut c = server.stream("/stream");
    let first = heartbeat_number(&c.next_event());
    assert_eq!(heartbeat_number(&c.next_event()), first + 1);
}

#[test]
fn idle_streams_get_keepalive_comments() {
    let server = Server::start(&["--keepalive", "1"]);
    let mut c = server.stream("/stream");
    c.wait_for_comment("keepalive");
    assert!(server.metrics()["sse_edge_keepalives_total"] >= 1.0);
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut c = server.stream("/stream");
    published_id(&server.publish("", b"before shutdown"));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(util::PATIENCE).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert_eq!(c.next_event().data, "before shutdown");
    assert!(c.try_next_event().is_none(), "stream closed on shutdown");
    assert!(server.log().contains("shutting down"));
}

/// A server started with `args` on a free loopback port, expected to refuse them at once.
struct Refused {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Refused {
    fn spawn(args: &[&str]) -> Refused {
        use std::io::Read;
        use std::process::Stdio;
        let mut all = vec!["--listen", "127.0.0.1:0", "--tick", "0", "--log", "error"];
        all.extend_from_slice(args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sse-edge"))
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sse-edge");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        Refused { child, stderr }
    }

    /// Its output once it exited, or (after killing it) an error if it still runs at
    /// `deadline`.
    fn output(mut self, deadline: std::time::Instant) -> Result<std::process::Output, String> {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("accepted: the server was still running".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Ok(std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: self.stderr.join().unwrap().into_bytes(),
        })
    }
}

#[test]
fn values_that_would_overflow_later_are_refused_at_start() {
    const HUGE: &str = "18446744073709551615"; // u64::MAX
    let cases = [
        ("--header-timeout", HUGE),
        ("--drain-timeout", HUGE),
        ("--slow-client-timeout", HUGE),
        ("--topic-idle", HUGE),
        ("--history-bytes", "0"),
        ("--history-bytes", HUGE),
    ];
    // All at once: one shared deadline, not PATIENCE per case when a value is accepted.
    let running: Vec<_> = cases
        .iter()
        .map(|(flag, value)| Refused::spawn(&[flag, value]))
        .collect();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    // Every case is waited for (and killed if need be) before anything is asserted.
    let outcomes: Vec<_> = running.into_iter().map(|r| r.output(deadline)).collect();
    let mut wrong = Vec::new();
    for ((flag, value), outcome) in cases.iter().zip(outcomes) {
        match outcome {
            Err(e) => wrong.push(format!("{flag} {value}: {e}")),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let one_line = stderr.trim_end().lines().count() == 1;
                if out.status.code() != Some(2) || !one_line || !stderr.contains(flag) {
                    wrong.push(format!(
                        "{flag} {value}: {:?}, stderr {stderr:?}",
                        out.status
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "refused at start with one line naming the flag and exit 2:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_refused_secret_is_named_by_its_flag_never_printed() {
    // Too short for HS256, so refused; it must not reach stderr whether it came from the
    // command line or from the environment variable SECURITY.md recommends for secrets.
    let secret = "hunter2-is-not-a-key";
    for (args, env) in [
        (vec!["--subscribe-jwt", secret], vec![]),
        (vec!["--publish-jwt", secret], vec![]),
        (vec![], vec![("SSE_EDGE_SUBSCRIBE_JWT", secret)]),
        (vec![], vec![("SSE_EDGE_PUBLISH_JWT", secret)]),
    ] {
        let out = run(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(secret), "secret echoed: {stderr:?}");
        assert!(
            !stderr.contains("hunter2"),
            "part of the secret echoed: {stderr:?}"
        );
        assert_one_line_exit_2(&out, "-jwt <KEY>' (not shown): an HS256 secret must be");
    }
    // Flags that are not secret still show the value, which helps.
    assert_one_line_exit_2(&run(&["--tick", "soon"], &[]), "'soon'");
}
