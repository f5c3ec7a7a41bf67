//! The parent process, one run from top to bottom:
//!
//! 1. plan: worker processes from the open-files limit, source addresses from the count;
//! 2. sample the server (`--server-pid`), start the workers, wait until every stream is
//!    established or failed, sample the server again (idle memory per stream);
//! 3. `Start`, then publish on schedule in a thread while progress frames arrive;
//! 4. wait (bounded by `--grace`) for deliveries still in flight, let slow readers drain;
//! 5. `Stop`, merge the workers' counters and V2 histograms, report, pick the exit status.
//!
//! Every wait here polls a condition against a deadline: nothing sleeps hoping it was enough.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use crate::args::Args;
use crate::clock::now_us;
use crate::fdlimit;
use crate::probe::{self, Sample};
use crate::progress::Progress;
use crate::publisher::{self, Job, Live, Outcome, Schedule};
use crate::report::{self, Percentiles, Slow, Summary};
use crate::sizing::{self, Measured};
use crate::stats::{self, new_latency, Counters, Latency};
use crate::tls;
use crate::url::{Scheme, Url};
use crate::wire::{Command, Mode, Plan, Report};
use crate::worker::{Message, Workers};

/// Set by the first Ctrl-C.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often workers report.
const PROGRESS_MS: u64 = 200;
/// How long to wait for workers' final reports after `Stop`.
const FINAL_WAIT_US: u64 = 15_000_000;
/// How long slow readers get to drain what the server kept for them.
const DRAIN_US: u64 = 2_000_000;
/// Descriptors a server process keeps for itself (listener, poll, waker, stdio).
const SERVER_FD_RESERVE: u64 = 16;

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // A second Ctrl-C ends the process the usual way.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs the load test the command line describes; returns the process exit status.
pub fn run(args: Args) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &Args) -> Result<ExitCode, String> {
    let t0 = now_us();
    args.validate()?;
    let url = Url::parse(&args.url)?;
    let publish_url = args.publish_url.as_deref().map(Url::parse).transpose()?;
    // Built once here, before any worker starts, so a bad --cacert file is one line and
    // exit 2; workers build their own from the same `Trust`, the publisher uses this one.
    let tls_config = args.trust().as_ref().map(tls::client_config).transpose()?;
    let fd_limit = fdlimit::raise_to_hard_limit()
        .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    let procs = args.procs(fd_limit).min(args.connections);
    let sources = args.sources(url.addr.ip());
    // SAFETY: the handler only stores to an atomic and calls signal(), both signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let before = sample(&args.server_pid)?;

    let connect_budget_us = secs_us(args.connect_timeout + 60.0)
        + if args.ramp > 0.0 {
            secs_us(args.connections as f64 / args.ramp)
        } else {
            0
        };
    let publish_budget_us = secs_us(args.duration);
    let deadline_us = t0 + connect_budget_us + publish_budget_us + secs_us(args.grace) + 30_000_000;
    let plans = split(args, procs, &sources, deadline_us);
    let workers = Workers::spawn(plans).map_err(|e| format!("cannot start workers: {e}"))?;
    let progress = Progress::new(args.no_progress);
    let mut board = Board::new(workers.len());

    // Connect.
    let connect_start = now_us();
    pump(
        &workers,
        &mut board,
        &progress,
        "connecting",
        args,
        t0 + connect_budget_us,
        |b| b.all_connected(),
    );
    let connect_secs = (now_us() - connect_start) as f64 / 1e6;
    let connected = sample(&args.server_pid)?;

    // Publish (or hold).
    let live = Arc::new(Live::default());
    let publish_start = now_us();
    let cpu_start = sample(&args.server_pid)?;
    let mut outcome: Option<Outcome> = None;
    if let Some(publish_url) = publish_url.filter(|_| !interrupted()) {
        workers.commander.send(&Command::Start);
        let schedule = match (args.rate, args.messages) {
            (Some(per_sec), _) => Schedule::Rate {
                per_sec,
                duration_us: publish_budget_us,
            },
            (None, count) => Schedule::Messages {
                count: count.unwrap_or(u64::MAX),
                max_us: publish_budget_us,
            },
        };
        let publish_tls = tls_config.filter(|_| publish_url.scheme == Scheme::Https);
        let job = Job {
            url: publish_url,
            mode: args.publish_mode,
            schedule,
            body_size: args.body_size,
            headers: args.publish_header_lines(),
            tls: publish_tls,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, live, commander) = (stop.clone(), live.clone(), workers.commander.clone());
            let closed_loop = args.publish_mode == Mode::ClosedLoop;
            std::thread::spawn(move || {
                publisher::run(&job, &stop, &live, |seq, at_us| {
                    if closed_loop {
                        commander.send(&Command::Sent { seq, at_us });
                    }
                })
            })
        };
        pump(
            &workers,
            &mut board,
            &progress,
            "publishing",
            args,
            u64::MAX,
            |_| {
                if interrupted() {
                    stop.store(true, Ordering::Relaxed);
                }
                handle.is_finished()
            },
        );
        outcome = handle.join().ok();
    } else {
        let until = now_us() + publish_budget_us;
        pump(
            &workers,
            &mut board,
            &progress,
            "holding",
            args,
            until,
            |_| false,
        );
    }
    let published = outcome.as_ref().map_or(0, |o| o.published);

    // Let deliveries in flight arrive, then let slow readers drain.
    let grace_end = now_us() + secs_us(args.grace);
    pump(
        &workers,
        &mut board,
        &progress,
        "settling",
        args,
        grace_end,
        |b| {
            let c = b.counters();
            let alive = c.fast_established() - c.disconnects;
            c.received >= published * alive
        },
    );
    let delivery_end = now_us();
    let cpu_end = sample_if_running(&args.server_pid)?;
    if board.counters().slow_established > 0 && !interrupted() {
        workers.commander.send(&Command::Drain);
        pump(
            &workers,
            &mut board,
            &progress,
            "draining",
            args,
            now_us() + DRAIN_US,
            |b| {
                let c = b.counters();
                c.slow_received >= published * (c.slow_established - c.slow_disconnects)
            },
        );
    }
    let after = sample_if_running(&args.server_pid)?;

    // Collect.
    workers.commander.send(&Command::Stop { published });
    pump(
        &workers,
        &mut board,
        &progress,
        "finishing",
        args,
        now_us() + FINAL_WAIT_US,
        |b| b.all_final(),
    );
    progress.finish();
    let worker_errors = board.worker_errors();
    for e in &worker_errors {
        eprintln!("loadtest: {e}");
    }
    drop(workers);
    let client_cpu_secs = own_cpu_secs();

    let counters = board.counters();
    let mut latency = new_latency();
    for f in board.finals.iter().flatten() {
        stats::merge_encoded(&mut latency, &f.histogram)
            .map_err(|e| format!("a worker sent a bad histogram: {e}"))?;
    }
    // A message's broadcast is complete when the slowest stream of any worker has it.
    let mut worst: Vec<u64> = Vec::new();
    for f in board.finals.iter().flatten() {
        if worst.len() < f.completion.len() {
            worst.resize(f.completion.len(), 0);
        }
        for (w, &c) in worst.iter_mut().zip(&f.completion) {
            *w = (*w).max(c);
        }
    }
    let mut completion = new_latency();
    for c in worst.into_iter().filter(|&c| c > 0) {
        completion.saturating_record(c);
    }
    let timing = Timing {
        t0,
        client_cpu_secs,
        connect_secs,
        publish_start,
        delivery_end,
    };
    let server = Server {
        before,
        connected,
        cpu_start,
        cpu_end,
        after,
    };
    let summary = summarize(
        args,
        &url,
        procs,
        &sources,
        &counters,
        &latency,
        &completion,
        outcome.as_ref(),
        &server,
        &timing,
        worker_errors.len(),
        board.first_tls_error(),
    );
    print!("{}", summary.table());
    let mut code = if summary.interrupted {
        ExitCode::from(130)
    } else if summary.passed || args.allow_loss {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Err(e) = write_outputs(args, &summary, &latency) {
        eprintln!("loadtest: {e}");
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

/// CPU seconds used by this process and its reaped children (the workers).
fn own_cpu_secs() -> f64 {
    let secs = |who| {
        // SAFETY: getrusage fills a plain struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

fn secs_us(secs: f64) -> u64 {
    (secs * 1e6) as u64
}

fn sample(pids: &[u32]) -> Result<Option<Sample>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    probe::sample(pids).map(Some).map_err(|e| e.to_string())
}

/// A reading once publishing has begun: `None` when a server process has exited since, so
/// the report leaves out figures it cannot stand behind rather than the run ending.
fn sample_if_running(pids: &[u32]) -> Result<Option<Sample>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    probe::sample_if_running(pids).map_err(|e| e.to_string())
}

/// Divides the streams evenly over `procs` workers.
fn split(args: &Args, procs: u64, sources: &[std::net::IpAddr], deadline_us: u64) -> Vec<Plan> {
    let mut first = 0;
    (0..procs)
        .map(|w| {
            let n = args.connections / procs + u64::from(w < args.connections % procs);
            let plan = Plan {
                worker: w as usize,
                url: args.url.clone(),
                connections: n,
                first_index: first,
                sources: sources.to_vec(),
                ramp_per_sec: args.ramp / procs as f64,
                max_in_flight: args.max_in_flight,
                connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
                slow_fraction: args.slow_fraction,
                mode: args.publish_mode,
                progress_ms: PROGRESS_MS,
                deadline_us,
                headers: args.header_lines(),
                tls: args.trust(),
            };
            first += n;
            plan
        })
        .collect()
}

/// A worker's final report.
#[derive(Clone)]
struct Final {
    counters: Counters,
    /// Its latency histogram, V2-serialized.
    histogram: Vec<u8>,
    /// Per message, its slowest fast stream's latency (µs).
    completion: Vec<u64>,
}

/// The latest word from every worker.
struct Board {
    latest: Vec<Option<Report>>,
    /// Each worker's last report, once it has sent it.
    finals: Vec<Option<Final>>,
    gone: Vec<Option<Option<String>>>,
    /// Latencies reported since the progress line last showed a p99.
    recent: Latency,
}

impl Board {
    fn new(workers: usize) -> Board {
        Board {
            latest: vec![None; workers],
            finals: vec![None; workers],
            gone: vec![None; workers],
            recent: new_latency(),
        }
    }

    fn apply(&mut self, message: Message) {
        match message {
            Message::Frame(w, report, histogram) => {
                if report.is_final {
                    self.finals[w] = Some(Final {
                        counters: report.counters.clone(),
                        histogram,
                        completion: report.completion_us.clone(),
                    });
                } else {
                    // A bad progress histogram only blurs the live p99; the final one is checked.
                    let _ = stats::merge_encoded(&mut self.recent, &histogram);
                }
                self.latest[w] = Some(report);
            }
            Message::Gone(w, error) => self.gone[w] = Some(error),
        }
    }

    /// Every worker's counters merged (final ones where they arrived).
    fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for (latest, last) in self.latest.iter().zip(&self.finals) {
            match (last, latest) {
                (Some(f), _) => total.merge(&f.counters),
                (None, Some(r)) => total.merge(&r.counters),
                (None, None) => {}
            }
        }
        total
    }

    fn all_connected(&self) -> bool {
        (0..self.latest.len()).all(|w| {
            self.gone[w].is_some() || self.latest[w].as_ref().is_some_and(|r| r.connect_done)
        })
    }

    fn all_final(&self) -> bool {
        (0..self.latest.len()).all(|w| self.finals[w].is_some() || self.gone[w].is_some())
    }

    /// Why the first stream that failed in TLS failed, from whichever worker said so.
    fn first_tls_error(&self) -> Option<String> {
        self.latest
            .iter()
            .flatten()
            .find_map(|r| r.tls_error.clone())
    }

    fn worker_errors(&self) -> Vec<String> {
        (0..self.latest.len())
            .filter(|&w| self.finals[w].is_none())
            .map(|w| match &self.gone[w] {
                Some(Some(e)) => format!("worker {w} broke off: {e}"),
                Some(None) => format!("worker {w} exited without a final report"),
                None => format!("worker {w} did not report in time"),
            })
            .collect()
    }
}

/// Feeds worker messages to `board` until `done`, the deadline, or Ctrl-C; keeps the
/// progress line current.
#[allow(clippy::too_many_arguments)]
fn pump(
    workers: &Workers,
    board: &mut Board,
    progress: &Progress,
    phase: &str,
    args: &Args,
    deadline_us: u64,
    mut done: impl FnMut(&Board) -> bool,
) {
    let mut shown_at = now_us();
    let mut shown_received = board.counters().received;
    loop {
        if done(board) || now_us() >= deadline_us {
            return;
        }
        // Publishing must still wind down after Ctrl-C (`done` stops the publisher).
        if interrupted() && phase != "publishing" && phase != "finishing" {
            return;
        }
        match workers.messages.recv_timeout(Duration::from_millis(50)) {
            Ok(message) => board.apply(message),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = now_us();
        if now - shown_at >= 1_000_000 {
            let c = board.counters();
            let received = c.received + c.slow_received;
            let rate =
                (received - shown_received.min(received)) as f64 * 1e6 / (now - shown_at) as f64;
            let p99 = if board.recent.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{:.2}ms",
                    board.recent.value_at_quantile(0.99) as f64 / 1000.0
                )
            };
            progress.show(
                phase,
                format!(
                    "connected {}/{}  events/s {:.0}  p99 {}  lost {}  errors {}",
                    c.established - c.disconnects - c.slow_disconnects,
                    args.connections,
                    rate,
                    p99,
                    c.lost,
                    c.connect_errors + c.disconnects
                ),
            );
            board.recent.reset();
            shown_at = now;
            shown_received = received;
        }
    }
}

/// When things happened.
struct Timing {
    t0: u64,
    /// CPU time of this process and its (reaped) workers.
    client_cpu_secs: f64,
    connect_secs: f64,
    publish_start: u64,
    delivery_end: u64,
}

/// The server samples taken along the run (all `None` without `--server-pid`).
struct Server {
    before: Option<Sample>,
    connected: Option<Sample>,
    cpu_start: Option<Sample>,
    cpu_end: Option<Sample>,
    after: Option<Sample>,
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    url: &Url,
    procs: u64,
    sources: &[std::net::IpAddr],
    c: &Counters,
    latency: &Latency,
    completion: &Latency,
    outcome: Option<&Outcome>,
    server: &Server,
    timing: &Timing,
    worker_errors: usize,
    tls_error: Option<String>,
) -> Summary {
    let published = outcome.map_or(0, |o| o.published);
    let received_total = c.received;
    let window = (timing.delivery_end.saturating_sub(timing.publish_start)) as f64 / 1e6;
    let bytes_per_conn = match (server.before, server.connected) {
        (Some(b), Some(a)) if c.established > 0 => {
            Some(a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / c.established as f64)
        }
        _ => None,
    };
    let cpu_ns = match (server.cpu_start, server.cpu_end) {
        (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns)),
        _ => None,
    };
    let deliveries = received_total + c.slow_received;
    let cpu_ns_per_delivery = cpu_ns
        .filter(|_| deliveries > 0)
        .map(|ns| ns as f64 / deliveries as f64);
    let fd_streams = (!args.server_pid.is_empty())
        .then(|| {
            args.server_pid
                .iter()
                .map(|&pid| {
                    probe::open_files_limit(pid).map(|l| l.saturating_sub(SERVER_FD_RESERVE))
                })
                .sum::<Option<u64>>()
        })
        .flatten();
    let measured = Measured {
        bytes_per_conn,
        deliveries_per_cpu_sec: cpu_ns_per_delivery
            .filter(|ns| *ns > 0.0)
            .map(|ns| 1e9 / ns),
        fd_streams_per_node: fd_streams,
        node_memory_bytes: probe::mem_total_bytes().unwrap_or(0),
        node_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    let sizing = (!args.server_pid.is_empty() || args.plan.is_some())
        .then(|| sizing::size(&measured, args.plan));
    let mut summary = Summary {
        url: url.to_string(),
        connections_requested: args.connections,
        connections_started: c.requested,
        connections_established: c.established,
        connect_errors: c.connect_errors,
        disconnects: c.disconnects,
        errors_by_kind: c.errors.clone(),
        messages_published: published,
        publish_errors: outcome.map(|o| o.errors.clone()).unwrap_or_default(),
        tls_error: tls_error.or_else(|| outcome.and_then(|o| o.tls_error.clone())),
        deliveries_expected: published * c.fast_established(),
        deliveries_received: received_total,
        deliveries_lost: c.lost,
        duplicates: c.duplicates,
        other_events: c.other_events,
        latency_us: Percentiles::of(latency),
        broadcast_completion_us: Percentiles::of(completion),
        publish_latency_us: outcome
            .map_or_else(Percentiles::default, |o| Percentiles::of(&o.post_latency)),
        deliveries_per_sec: if window > 0.0 {
            received_total as f64 / window
        } else {
            0.0
        },
        slow: Slow {
            clients: c.slow_established,
            received: c.slow_received,
            lost: c.slow_lost,
            disconnects: c.slow_disconnects,
        },
        server_rss_bytes: server.after.map(|s| s.rss_bytes),
        server_rss_before_bytes: server.before.map(|s| s.rss_bytes),
        server_rss_connected_bytes: server.connected.map(|s| s.rss_bytes),
        server_bytes_per_conn: bytes_per_conn,
        server_cpu_seconds: cpu_ns.map(|ns| ns as f64 / 1e9),
        server_cpu_ns_per_delivery: cpu_ns_per_delivery,
        server_exited: !args.server_pid.is_empty()
            && (server.cpu_end.is_none() || server.after.is_none()),
        server_reported_clients: outcome.and_then(|o| o.server_clients),
        sizing,
        procs,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        publish_mode: match (&args.publish_url, args.publish_mode) {
            (None, _) => "none".to_owned(),
            (Some(_), Mode::Stamped) => "stamped".to_owned(),
            (Some(_), Mode::ClosedLoop) => "closed-loop".to_owned(),
        },
        hold_secs: if args.publish_url.is_none() {
            timing.delivery_end.saturating_sub(timing.publish_start) as f64 / 1e6
        } else {
            0.0
        },
        client_cpu_secs: timing.client_cpu_secs,
        connect_secs: timing.connect_secs,
        publish_secs: outcome.map_or(0.0, |o| (o.ended_us - o.started_us) as f64 / 1e6),
        publish_max_lag_us: outcome.map_or(0, |o| o.max_lag_us),
        elapsed_secs: (now_us() - timing.t0) as f64 / 1e6,
        interrupted: interrupted(),
        worker_errors: worker_errors as u64,
        passed: false,
    };
    summary.passed = summary.failures().is_empty();
    summary
}

fn write_outputs(args: &Args, summary: &Summary, latency: &Latency) -> Result<(), String> {
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        let mut out = Vec::new();
        report::write_hgrm(latency, &mut out).map_err(|e| e.to_string())?;
        std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "SSE delivery latency: {} streams, {} messages",
            summary.connections_established, summary.messages_published
        );
        crate::plot::write_svg(latency, &title, path)?;
    }
    Ok(())
}
