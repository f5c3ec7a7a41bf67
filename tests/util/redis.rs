//! A real `redis-server` for the integration tests: Debian's binary on a free loopback port,
//! with its own temporary directory, killed on drop. Include it with
//! `#[path = "util/redis.rs"] mod redis_util;`.
//!
//! Every wait polls against a deadline; nothing sleeps hoping it was long enough.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a starting (or AOF-replaying) Redis may take to answer `PING`.
const STARTUP: Duration = Duration::from_secs(30);

/// A `redis-server` process, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// Starts Redis without persistence (`--save ""`, `--appendonly no`).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts Redis with an append-only file fsynced on every write
    /// (`--appendonly yes --appendfsync always`): what was acknowledged survives a kill.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sse-edge-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        // A free port may be taken between asking and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                persistent,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports; see {dir:?}/redis.log");
    }

    /// Runs the process on `self.port` and waits for `PING`; false when it exited at once
    /// (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("temp dir is UTF-8");
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            dir,
            "--logfile",
            "redis.log",
            "--save",
            "",
        ];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let child = match Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: scripts/test.sh installs it \
                 (apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.command(&["PING"]).as_deref() == Some("+PONG") {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {STARTUP:?}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL, as a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it if running, then starts it again on the same port and directory (an
    /// append-only file, if any, is replayed).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        // The port was just freed; a retry covers a slow release.
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the process (SIGSTOP): the port still accepts, nothing answers. As a hung Redis.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a [`RedisServer::pause`]d process (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Deletes every key (`FLUSHALL`): Redis as if it had lost its data.
    pub fn flushall(&self) {
        assert_eq!(self.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Sends one command and returns the first line of the reply (`+PONG`, `:3`, `-ERR …`),
    /// or None when Redis cannot be reached. Enough for status and integer replies.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned()).filter(|l| !l.is_empty())
    }
}

impl RedisServer {
    /// `INFO section`'s text (a bulk reply, read whole).
    pub fn info(&self, section: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        s.write_all(req.as_bytes()).expect("send INFO");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).expect("INFO reply");
        let len: usize = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("INFO answered {line:?}"));
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("INFO body");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// How many times Redis ran `command` since start (`INFO commandstats`), counting the
    /// calls scripts made.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats");
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a call count"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
