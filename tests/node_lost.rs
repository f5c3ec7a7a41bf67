//! A node killed under load loses nothing (issue 26, items 3 and 4): three cluster nodes on one
//! real `redis-server`, 1 500 streams held by the real loadtest with `--reconnect` (each
//! stream comes back as `EventSource` does, with `Last-Event-ID`), publishing at 10 events/s
//! to a node that stays up, and one node `SIGKILL`ed mid-run. Directly, each stream's failover
//! list starts at a different node; through a real nginx (round robin, the proxy's default
//! failure settings), the proxy must notice the dead node, never mark a survivor down, and
//! answer no client 502.
//!
//! The survivors keep two events per topic (`--history 2`), so the resumes reach back before
//! their history and the Redis replay serves them; the resumes of the killed node's streams
//! start from the same few ids and must share their reads (`XRANGE`, counted by Redis's
//! `INFO commandstats`). Every wait is on a condition with a deadline; nothing asserts a time.

#[path = "util/redis.rs"]
mod redis_util;
mod util;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis_util::RedisServer;
use util::{Server, PATIENCE};

/// Streams held over the three nodes.
const STREAMS: u64 = 1500;

/// Publishes per second, to a survivor.
const RATE: &str = "10";

/// Seconds of publishing: the kill comes after two of them, the comeback takes about one.
const DURATION: &str = "8";

/// The longest one loadtest run may take (its connect phase, the run, its grace).
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Three sse-edge nodes on one Redis, each keeping two events per topic and telling its
/// streams to come back within ½–1½ × 400 ms.
struct Cluster {
    redis: RedisServer,
    nodes: Vec<Server>,
}

impl Cluster {
    fn start() -> Cluster {
        let redis = RedisServer::start();
        let url = redis.url();
        let nodes = (0..3)
            .map(|_| Server::start(&["--redis", &url, "--history", "2", "--retry-ms", "400"]))
            .collect();
        Cluster { redis, nodes }
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[node].addr)
    }

    /// Waits until every stream is held (`held` says how many a node should have) and the
    /// survivor that takes the publishes has taken 20.
    fn wait_loaded(&self, held: impl Fn(&Server) -> bool) {
        for node in &self.nodes {
            node.wait_metrics("the node holds its streams", |m| held(node) && m.len() > 1);
        }
        self.nodes[1].wait_metrics("publishing under way", |m| {
            m["sse_edge_events_published_total"] >= 20.0
        });
    }

    /// Kills node 0 (`SIGKILL`) and waits until it is gone; returns how many streams it held.
    fn kill_first(&mut self) -> u64 {
        let held = self.nodes[0].metrics()["sse_edge_clients"] as u64;
        self.nodes[0].signal(libc::SIGKILL);
        self.nodes[0]
            .wait_exit(PATIENCE)
            .expect("the killed node exits");
        held
    }
}

/// `target/<profile>/loadtest`, beside this test's own binary (`cargo build --workspace
/// --bins` builds it; `cargo test --workspace` too).
fn loadtest_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps");
    let loadtest = dir.join("loadtest");
    assert!(
        loadtest.exists(),
        "{} is missing: build it with `cargo build --workspace --bins`",
        loadtest.display()
    );
    loadtest
}

/// The loadtest, running in the background until [`Loadtest::finish`].
struct Loadtest {
    child: Child,
    json: PathBuf,
}

impl Loadtest {
    /// `--reconnect` streams over `urls`, publishing to `publish`, with its `--json` summary.
    fn start(name: &str, urls: &str, publish: &str) -> Loadtest {
        let json = std::env::temp_dir().join(format!(
            "sse-edge-node-lost-{}-{name}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&json);
        let child = Command::new(loadtest_binary())
            .args(["--connections", &STREAMS.to_string(), "--procs", "1"])
            .args(["--rate", RATE, "--duration", DURATION, "--reconnect"])
            .args(["--url", urls, "--publish-url", publish, "--no-progress"])
            .arg("--json")
            .arg(&json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the loadtest");
        Loadtest { child, json }
    }

    /// Waits for its end (within [`RUN_LIMIT`]) and returns its summary; panics with what it
    /// printed when it failed or wrote none.
    fn finish(mut self) -> serde_json::Value {
        let deadline = Instant::now() + RUN_LIMIT;
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the loadtest ran past {RUN_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = wait_output(&mut self.child);
        let text = std::fs::read_to_string(&self.json)
            .unwrap_or_else(|e| panic!("no --json summary ({e}): {}", describe(&out)));
        let _ = std::fs::remove_file(&self.json);
        let j: serde_json::Value = serde_json::from_str(&text).expect("--json is JSON");
        assert!(out.status.success(), "{}\n{j:#}", describe(&out));
        j
    }
}

fn wait_output(child: &mut Child) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut stderr);
    }
    Output {
        status: child.wait().expect("wait"),
        stdout,
        stderr,
    }
}

fn describe(out: &Output) -> String {
    format!(
        "loadtest: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What every run must show: each stream got every event once, in order (the loadtest
/// counts a skipped id as lost and a repeated one as duplicated, per stream, across its
/// connections), and exactly the killed node's streams came back, each once.
fn assert_nothing_lost(j: &serde_json::Value, killed_held: u64) {
    let published = j["messages_published"]
        .as_u64()
        .expect("messages_published");
    assert!(published >= 40, "{j:#}");
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["deliveries_expected"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_received"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["deliveries_lost_covered"], 0, "{j:#}");
    assert_eq!(j["deliveries_duplicated"], 0, "{j:#}");
    assert_eq!(j["reconnects"], killed_held, "{j:#}");
    assert_eq!(j["reconnect_ms"]["count"], killed_held, "{j:#}");
}

/// The Redis reads of a storm of `resumes` from a few ids were shared: each resume reading
/// its own range made about 0.7 reads per resume here before ranges lingered after their
/// first use (359 for 500); shared, a few reads serve them all, plus one now and then for
/// what was published meanwhile.
fn assert_reads_shared(xrange: u64, resumes: u64) {
    eprintln!("{resumes} resumes made {xrange} XRANGE calls");
    assert!(resumes > 0);
    assert!(
        xrange * 10 <= resumes,
        "{resumes} resumes from a few ids made {xrange} XRANGE calls: they did not share them"
    );
}

#[test]
fn a_node_killed_under_load_loses_nothing_and_its_streams_resume_on_the_survivors() {
    let mut cluster = Cluster::start();
    // Stream i starts on node i mod 3 and fails over to the next node of its list.
    let urls: Vec<String> = (0..3).map(|n| cluster.url(n, "/stream")).collect();
    let run = Loadtest::start("direct", &urls.join(","), &cluster.url(1, "/broadcast"));
    let third = (STREAMS / 3) as f64;
    cluster.wait_loaded(|node| node.metrics()["sse_edge_clients"] >= third);
    let before = cluster.redis.calls("xrange");
    let held = cluster.kill_first();
    assert_eq!(held, STREAMS / 3);
    let j = run.finish();
    assert_nothing_lost(&j, held);
    // Node 0's streams came back to node 1, the next of their lists; node 2 kept its own.
    let opened = |n: usize| cluster.nodes[n].metrics()["sse_edge_streams_opened_total"] as u64;
    assert_eq!((opened(1), opened(2)), (held + STREAMS / 3, STREAMS / 3));
    assert_reads_shared(cluster.redis.calls("xrange") - before, held);
}

/// A test instance of Debian's nginx in front of the cluster: its own prefix, configuration,
/// pid file, logs and temporary paths, a random loopback port, in the foreground; killed (its
/// whole process group) on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Round robin over `upstreams`, `proxy_buffering off`, HTTP/1.1 upstream keep-alive as
    /// README's recipe has; the failure settings are nginx's defaults (`max_fails=1
    /// fail_timeout=10s`, `proxy_next_upstream error timeout`). `worker_connections`,
    /// `multi_accept` and the listen backlog fit the storm as README's recipe has them (two
    /// connections per stream: "Behind a reverse proxy").
    fn start(upstreams: &[String]) -> Nginx {
        let bin = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").output().is_ok())
            .expect("nginx is not installed: scripts/test.sh installs it (apt-get install nginx)");
        let dir = std::env::temp_dir().join(format!("sse-edge-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx directory");
        let d = dir.display();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("    server {u};\n"))
            .collect();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let conf = format!(
                "pid {d}/nginx.pid;
error_log {d}/error.log info;
worker_processes 1;
worker_rlimit_nofile 8192;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  upstream edge {{
{servers}    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://edge;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"
            );
            std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
            use std::os::unix::process::CommandExt;
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-e", &format!("{d}/error.log"), "-g", "daemon off;"])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, dir, port };
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen; its log:\n{}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx did not start on any of 5 ports; see {d}/error.log");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its error log so far.
    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The statuses it answered, counted (from its access log, once its requests ended).
    fn statuses(&self) -> BTreeMap<String, u64> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in log.lines() {
            // `ADDR - - [TIME] "REQUEST" STATUS BYTES ...`
            if let Some(status) = line
                .split('"')
                .nth(2)
                .and_then(|r| r.split_whitespace().next())
            {
                *counts.entry(status.to_owned()).or_default() += 1;
            }
        }
        counts
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master and its worker: one process group of their own.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn through_nginx_a_node_killed_under_load_is_routed_around_and_nothing_is_lost() {
    let mut cluster = Cluster::start();
    let upstreams: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let nginx = Nginx::start(&upstreams);
    // Every stream through the proxy (a list of one: it comes back to the proxy); publishes
    // straight to a survivor, so that none has an unknown fate.
    let run = Loadtest::start(
        "nginx",
        &nginx.url("/stream"),
        &cluster.url(1, "/broadcast"),
    );
    let held = |node: &Server| node.metrics()["sse_edge_clients"];
    let total = || cluster.nodes.iter().map(held).sum::<f64>();
    cluster.nodes[0].wait_metrics("every stream held through the proxy", |_| {
        total() >= STREAMS as f64
    });
    cluster.wait_loaded(|node| held(node) > 0.0);
    let before = cluster.redis.calls("xrange");
    let killed = cluster.kill_first();
    let j = run.finish();
    assert_nothing_lost(&j, killed);
    // The proxy noticed the dead node (a refused connect marks it down for fail_timeout),
    // never gave up on the survivors, and answered every request with the node's 200.
    let errors = nginx.errors();
    let dead = &upstreams[0];
    assert!(
        !errors.contains("no live upstreams"),
        "nginx found no live upstream:\n{errors}"
    );
    for line in errors
        .lines()
        .filter(|l| l.contains("temporarily disabled"))
    {
        assert!(line.contains(dead), "nginx marked a survivor down:\n{line}");
    }
    let statuses = nginx.statuses();
    assert_eq!(
        statuses.keys().map(String::as_str).collect::<Vec<_>>(),
        ["200"],
        "nginx answered {statuses:?}; its errors:\n{errors}"
    );
    assert_reads_shared(cluster.redis.calls("xrange") - before, killed);
}
