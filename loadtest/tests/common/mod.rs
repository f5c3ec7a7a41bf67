//! What the loadtest's integration tests share: running the binary to its end within a
//! bound, its output read meanwhile so a full pipe never stalls it.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest one loadtest run in these tests may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(50);

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the loadtest binary with `args` to its end and returns what it printed; panics (and
/// kills it) if it runs past [`RUN_LIMIT`].
pub fn run_loadtest(args: &[String]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadtest");
    let mut guard = KillOnDrop(child);
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(guard.0.stdout.take().expect("piped")));
    let stderr = drain(Box::new(guard.0.stderr.take().expect("piped")));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "loadtest ran past {RUN_LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A running sse-edge node, killed on drop.
pub struct Node {
    /// The process.
    pub process: KillOnDrop,
    /// Its loopback port.
    pub port: u16,
}

impl Node {
    /// Starts `target/<profile>/sse-edge` with `args` (give `--listen 127.0.0.1:0` or a
    /// fixed port) and waits for its `listening on 127.0.0.1:PORT` line.
    pub fn start(args: &[&str]) -> Node {
        crate::common::raise_fd_limit();
        let exe = server_binary();
        let mut child = Command::new(&exe)
            .args(["--tick", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = child.stderr.take().expect("piped");
        let process = KillOnDrop(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Keep draining after the port is known, so the node never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                const AT: &str = "listening on 127.0.0.1:";
                if let Some(at) = line.find(AT) {
                    let digits: String = line[at + AT.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(port) = digits.parse::<u16>() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sse-edge did not log `listening on 127.0.0.1:PORT` within 30 s");
        Node { process, port }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub fn kill(mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    /// A request's answer body, `None` if the node did not answer.
    fn request(&self, head: &str) -> Option<String> {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (status, body) = text.split_once("\r\n\r\n")?;
        status.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// Publishes `body` to `topic`; the id the node gave it.
    pub fn publish(&self, topic: &str, body: &str) -> String {
        let answer = self
            .request(&format!(
                "POST /broadcast?topic={topic} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
            .expect("publish answered 200");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("publish answer is JSON");
        v["id"].as_str().expect("an id").to_owned()
    }

    /// One metric's value (summed over its labels), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self
            .request("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Raises this process's open-files limit (the tests' own sockets count too).
pub fn raise_fd_limit() {
    loadtest::fdlimit::raise_to_hard_limit().expect("raise the open-files limit");
}

/// `target/<profile>/sse-edge`, beside the `deps/` directory the test runs from.
pub fn server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let server = profile_dir.join(format!("sse-edge{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.exists(),
        "{} is missing: build the server first with `cargo build --workspace --bins`",
        server.display()
    );
    server
}

/// Waits until `done` holds, polling; panics with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
