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

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::args::Args;
use crate::board::Board;
use crate::clock::now_us;
use crate::fdlimit;
use crate::probe::{self, Sample};
use crate::progress::Progress;
use crate::publisher::{self, Job, Live, Outcome, Schedule};
use crate::report::{self, Percentiles, Replayed, Slow, Spread, Summary};
use crate::sizing::{self, Measured};
use crate::stats::{Counters, Latency};
use crate::tls;
use crate::url::{Scheme, Url};
use crate::wire::{Command, Mode, Plan};
use crate::worker::Workers;

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
    let mut run = Run::start(args)?;
    run.connect()?;
    run.publish_or_hold()?;
    run.settle()?;
    let results = run.finish()?;
    let summary = results.summary();
    print!("{}", summary.table());
    let mut code = if summary.interrupted {
        ExitCode::from(130)
    } else if summary.passed || args.allow_loss {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Err(e) = write_outputs(args, &summary, &results.latency) {
        eprintln!("loadtest: {e}");
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

/// Where the run is. Each phase feeds worker messages to the [`Board`] until its condition
/// holds or its deadline passes; the progress line shows the phase's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until every stream is established or failed.
    Connecting,
    /// While the publisher runs.
    Publishing,
    /// No publisher: the streams are held for `--duration`.
    Holding,
    /// After the last publish, for at most `--grace`: deliveries still in flight.
    Settling,
    /// Slow readers read what the server kept for them.
    Draining,
    /// After `Stop`: waiting for the workers' final reports.
    Finishing,
}

impl Phase {
    /// The name on the progress line.
    fn label(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Publishing => "publishing",
            Phase::Holding => "holding",
            Phase::Settling => "settling",
            Phase::Draining => "draining",
            Phase::Finishing => "finishing",
        }
    }

    /// Whether Ctrl-C ends the phase at once. Publishing must still wind down (its condition
    /// stops the publisher), and the final reports are what Ctrl-C still prints.
    fn ends_on_interrupt(self) -> bool {
        !matches!(self, Phase::Publishing | Phase::Finishing)
    }
}

/// One run under way: what the command line planned, the workers, and what was measured so
/// far. Its methods are the phases, in order: [`start`](Run::start), [`connect`](Run::connect),
/// [`publish_or_hold`](Run::publish_or_hold), [`settle`](Run::settle), [`finish`](Run::finish).
struct Run<'a> {
    args: &'a Args,
    url: Url,
    publish_url: Option<Url>,
    /// Built once, before any worker starts; the publisher uses it for an `https://` URL.
    tls_config: Option<Arc<ClientConfig>>,
    procs: u64,
    sources: Vec<IpAddr>,
    workers: Workers,
    board: Board,
    progress: Progress,
    timing: Timing,
    server: Server,
    /// What the publisher did, once it has run.
    outcome: Option<Outcome>,
    /// When to send `Blip` (`--reconnect-after`); `None` once sent.
    blip_at_us: Option<u64>,
}

impl<'a> Run<'a> {
    /// Plans the run, samples the server before any stream, and starts the workers.
    fn start(args: &'a Args) -> Result<Run<'a>, String> {
        let t0 = now_us();
        args.validate()?;
        // Every URL of the list is checked here, so a bad one is one line and exit 2; the
        // first one decides the source addresses.
        let urls = args
            .urls()
            .into_iter()
            .map(Url::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let url = urls[0].clone();
        let publish_url = args.publish_url.as_deref().map(Url::parse).transpose()?;
        // Built once here, before any worker starts, so a bad --cacert file is one line and
        // exit 2; workers build their own from the same `Trust`, the publisher uses this one.
        let tls_config = args
            .trust()
            .map(|trust| tls::client_config(&trust, false))
            .transpose()?;
        let fd_limit = fdlimit::raise_to_hard_limit()
            .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
        let procs = args.procs(fd_limit).min(args.connections);
        let sources = args.sources(url.addr.ip());
        // SAFETY: the handler only stores to an atomic and calls signal(), both signal-safe.
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
        let server = Server {
            before: sample(&args.server_pid)?,
            ..Server::default()
        };
        let deadline_us = t0
            + connect_budget_us(args)
            + secs_us(args.duration)
            + secs_us(args.grace)
            + 30_000_000;
        let plans = split(args, procs, &sources, deadline_us);
        let workers = Workers::spawn(plans).map_err(|e| format!("cannot start workers: {e}"))?;
        Ok(Run {
            board: Board::new(workers.len()),
            progress: Progress::new(args.no_progress),
            args,
            url,
            publish_url,
            tls_config,
            procs,
            sources,
            workers,
            timing: Timing {
                t0,
                ..Timing::default()
            },
            server,
            outcome: None,
            blip_at_us: None,
        })
    }

    /// Waits until every stream is established or failed (or the connect budget is spent),
    /// then samples the server with its streams idle.
    fn connect(&mut self) -> Result<(), String> {
        let connect_start = now_us();
        let deadline = self.timing.t0 + connect_budget_us(self.args);
        self.pump(Phase::Connecting, deadline, |b| b.all_connected());
        self.timing.connect_secs = (now_us() - connect_start) as f64 / 1e6;
        self.server.connected = sample(&self.args.server_pid)?;
        Ok(())
    }

    /// Publishes in a thread until its schedule ends (or Ctrl-C), or, without a publish URL,
    /// holds the streams for `--duration`.
    fn publish_or_hold(&mut self) -> Result<(), String> {
        self.timing.publish_start = now_us();
        self.blip_at_us = self
            .args
            .reconnect_after
            .map(|secs| self.timing.publish_start + secs_us(secs));
        self.server.cpu_start = sample(&self.args.server_pid)?;
        match self.publish_url.clone().filter(|_| !interrupted()) {
            Some(publish_url) => self.publish(publish_url),
            None => {
                let until = now_us() + secs_us(self.args.duration);
                self.pump(Phase::Holding, until, |_| false);
            }
        }
        if self.args.storm {
            // The storm has settled by now (replays delivered, the node's after-storm
            // clean-up done): its memory per stream is read here, not at the heads.
            self.server.connected = sample_if_running(&self.args.server_pid)?;
        }
        Ok(())
    }

    fn publish(&mut self, publish_url: Url) {
        let args = self.args;
        self.workers.commander.send(&Command::Start);
        let duration_us = secs_us(args.duration);
        let schedule = match (args.rate, args.messages) {
            (Some(per_sec), _) => Schedule::Rate {
                per_sec,
                duration_us,
            },
            (None, count) => Schedule::Messages {
                count: count.unwrap_or(u64::MAX),
                max_us: duration_us,
            },
        };
        let publish_tls = self
            .tls_config
            .clone()
            .filter(|_| publish_url.scheme == Scheme::Https);
        let job = Job {
            url: publish_url,
            mode: args.publish_mode,
            schedule,
            body_size: args.body_size,
            headers: args.publish_header_lines(),
            tls: publish_tls,
            connections: args.publishers,
        };
        let live = Arc::new(Live::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, live, commander) =
                (stop.clone(), live.clone(), self.workers.commander.clone());
            let closed_loop = args.publish_mode == Mode::ClosedLoop;
            std::thread::spawn(move || {
                publisher::run(&job, &stop, &live, |seq, at_us| {
                    if closed_loop {
                        commander.send(&Command::Sent { seq, at_us });
                    }
                })
            })
        };
        self.pump(Phase::Publishing, u64::MAX, |_| {
            if interrupted() {
                stop.store(true, Ordering::Relaxed);
            }
            handle.is_finished()
        });
        self.outcome = handle.join().ok();
    }

    /// Messages published successfully.
    fn published(&self) -> u64 {
        self.outcome.as_ref().map_or(0, |o| o.published)
    }

    /// Lets deliveries in flight arrive (bounded by `--grace`), then lets slow readers drain;
    /// samples the server's CPU at the end of deliveries and its memory at the very end.
    fn settle(&mut self) -> Result<(), String> {
        let published = self.published();
        let grace_end = now_us() + secs_us(self.args.grace);
        self.pump(Phase::Settling, grace_end, |b| {
            let c = b.counters();
            let alive = c.fast_established() - c.disconnects;
            c.received >= published * alive
        });
        self.timing.delivery_end = now_us();
        self.server.cpu_end = sample_if_running(&self.args.server_pid)?;
        if self.board.counters().slow_established > 0 && !interrupted() {
            self.workers.commander.send(&Command::Drain);
            self.pump(Phase::Draining, now_us() + DRAIN_US, |b| {
                let c = b.counters();
                c.slow_received >= published * (c.slow_established - c.slow_disconnects)
            });
        }
        self.server.after = sample_if_running(&self.args.server_pid)?;
        Ok(())
    }

    /// Sends `Stop`, collects the final reports, lets the workers exit, and merges what they
    /// measured.
    fn finish(mut self) -> Result<Results<'a>, String> {
        self.workers.commander.send(&Command::Stop {
            published: self.published(),
            skipped: self
                .outcome
                .as_ref()
                .map(|o| o.skipped.clone())
                .unwrap_or_default(),
        });
        self.pump(Phase::Finishing, now_us() + FINAL_WAIT_US, |b| {
            b.all_final()
        });
        self.progress.finish();
        let worker_errors = self.board.worker_errors();
        for e in &worker_errors {
            eprintln!("loadtest: {e}");
        }
        // Reaps the workers, so that their CPU time is counted below.
        drop(self.workers);
        self.timing.client_cpu_secs = own_cpu_secs();
        Ok(Results {
            counters: self.board.counters(),
            latency: self.board.latency()?,
            reconnect_us: self.board.reconnect_us()?,
            storm: self.board.storm(),
            completion: self.board.completion(),
            worker_errors: worker_errors.len(),
            tls_error: self.board.first_tls_error(),
            args: self.args,
            url: self.url,
            procs: self.procs,
            sources: self.sources,
            timing: self.timing,
            server: self.server,
            outcome: self.outcome,
        })
    }

    /// Feeds worker messages to the board until `done`, the deadline, or Ctrl-C; keeps the
    /// progress line current.
    fn pump(&mut self, phase: Phase, deadline_us: u64, mut done: impl FnMut(&Board) -> bool) {
        let mut shown_at = now_us();
        let mut shown_received = self.board.counters().received;
        loop {
            if done(&self.board) || now_us() >= deadline_us {
                return;
            }
            if interrupted() && phase.ends_on_interrupt() {
                return;
            }
            if self.blip_at_us.is_some_and(|at| now_us() >= at) {
                self.blip_at_us = None;
                self.workers.commander.send(&Command::Blip);
            }
            match self
                .workers
                .messages
                .recv_timeout(Duration::from_millis(50))
            {
                Ok(message) => self.board.apply(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = now_us();
            if now - shown_at >= 1_000_000 {
                let received = self.show_progress(phase, now - shown_at, shown_received);
                shown_at = now;
                shown_received = received;
            }
        }
    }

    /// Updates the progress line with what arrived over the last `elapsed_us` (deliveries
    /// were `shown_received` when it was last shown); returns the deliveries so far.
    fn show_progress(&mut self, phase: Phase, elapsed_us: u64, shown_received: u64) -> u64 {
        let c = self.board.counters();
        let received = c.received + c.slow_received;
        let rate = (received - shown_received.min(received)) as f64 * 1e6 / elapsed_us as f64;
        let p99 = if self.board.recent.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.2}ms",
                self.board.recent.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        self.progress.show(
            phase.label(),
            format!(
                "connected {}/{}  events/s {:.0}  p99 {}  lost {}  errors {}",
                c.established - c.disconnects - c.slow_disconnects,
                self.args.connections,
                rate,
                p99,
                c.lost,
                c.connect_errors + c.disconnects
            ),
        );
        self.board.recent.reset();
        received
    }
}

/// How long connecting may take: the connect timeout, the ramp, and a minute of slack.
fn connect_budget_us(args: &Args) -> u64 {
    secs_us(args.connect_timeout + 60.0)
        + if args.ramp > 0.0 {
            secs_us(args.connections as f64 / args.ramp)
        } else {
            0
        }
}

/// What a finished run measured, merged from every worker, with what it was asked to do.
struct Results<'a> {
    args: &'a Args,
    url: Url,
    procs: u64,
    sources: Vec<IpAddr>,
    timing: Timing,
    server: Server,
    outcome: Option<Outcome>,
    counters: Counters,
    /// Every delivery latency of the run.
    latency: Latency,
    /// Per message, until its last fast stream had it.
    completion: Latency,
    /// Workers that sent no final report.
    worker_errors: usize,
    /// Why the first stream that failed in TLS failed.
    tls_error: Option<String>,
    /// From each stream's end to its next head (`--reconnect`).
    reconnect_us: Latency,
    /// The storm, merged (`--storm`).
    storm: Option<crate::wire::StormTally>,
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
                // A storm is every connection at once; the open-files limit is the bound.
                max_in_flight: if args.storm {
                    n.max(1) as usize
                } else {
                    args.max_in_flight
                },
                connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
                slow_fraction: args.slow_fraction,
                mode: args.publish_mode,
                progress_ms: PROGRESS_MS,
                deadline_us,
                headers: args.header_lines(),
                tls: args.trust(),
                tls_resume: args.tls_resume,
                reconnect: args.reconnects(),
                last_event_id: args.last_event_id.clone(),
                storm: args.storm,
                streams_per_connection: args.streams_per_connection(),
            };
            first += n;
            plan
        })
        .collect()
}

/// When things happened.
#[derive(Default)]
struct Timing {
    t0: u64,
    /// CPU time of this process and its (reaped) workers.
    client_cpu_secs: f64,
    connect_secs: f64,
    publish_start: u64,
    delivery_end: u64,
}

/// The server samples taken along the run (all `None` without `--server-pid`), each summed
/// over every measured process.
#[derive(Default)]
struct Server {
    before: Option<Sample>,
    connected: Option<Sample>,
    cpu_start: Option<Sample>,
    cpu_end: Option<Sample>,
    after: Option<Sample>,
}

/// What the server paid, from samples summed over every measured process (so a server of
/// several processes is one server): memory per stream from the growth while the streams
/// connected, CPU per delivery over the publishing window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ServerCost {
    /// (RSS connected − RSS before) / streams established.
    bytes_per_conn: Option<f64>,
    /// CPU time from the first publish to the end of the delivery wait.
    cpu_ns: Option<u64>,
    /// That CPU time / deliveries (fast and slow).
    cpu_ns_per_delivery: Option<f64>,
}

impl ServerCost {
    fn of(server: &Server, established: u64, deliveries: u64) -> ServerCost {
        let bytes_per_conn = match (server.before, server.connected) {
            (Some(b), Some(a)) if established > 0 => {
                Some(a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / established as f64)
            }
            _ => None,
        };
        let cpu_ns = match (server.cpu_start, server.cpu_end) {
            (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns)),
            _ => None,
        };
        let cpu_ns_per_delivery = cpu_ns
            .filter(|_| deliveries > 0)
            .map(|ns| ns as f64 / deliveries as f64);
        ServerCost {
            bytes_per_conn,
            cpu_ns,
            cpu_ns_per_delivery,
        }
    }
}

impl Results<'_> {
    /// The summary the table and `--json` show.
    fn summary(&self) -> Summary {
        let Results {
            args,
            url,
            procs,
            sources,
            timing,
            server,
            counters: c,
            latency,
            completion,
            worker_errors,
            ..
        } = self;
        let procs = *procs;
        let outcome = self.outcome.as_ref();
        let tls_error = self.tls_error.clone();
        let published = outcome.map_or(0, |o| o.published);
        let received_total = c.received;
        let window = (timing.delivery_end.saturating_sub(timing.publish_start)) as f64 / 1e6;
        let ServerCost {
            bytes_per_conn,
            cpu_ns,
            cpu_ns_per_delivery,
        } = ServerCost::of(server, c.established, received_total + c.slow_received);
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
        let reconnects = args.reconnects();
        let ms = |us: u64| us as f64 / 1000.0;
        let mut summary = Summary {
            url: if args.urls().len() > 1 {
                args.url.clone()
            } else {
                url.to_string()
            },
            reconnects: reconnects.then_some(c.reconnects),
            reconnect_attempts: reconnects.then_some(c.reconnect_attempts),
            deliveries_duplicated: reconnects.then_some(c.duplicates),
            deliveries_lost_covered: reconnects.then_some(c.lost_covered),
            reconnect_ms: reconnects.then(|| Spread {
                p50: ms(self.reconnect_us.value_at_quantile(0.5)),
                p99: ms(self.reconnect_us.value_at_quantile(0.99)),
                max: ms(self.reconnect_us.max()),
                count: self.reconnect_us.len(),
            }),
            storm_refused: args
                .storm
                .then(|| c.errors.get("refused").copied().unwrap_or(0)),
            storm_closed: args.storm.then_some(c.closed_before_head),
            storm_all_served_ms: self
                .storm
                .as_ref()
                .filter(|s| args.storm && s.all_served_us > 0)
                .map(|s| ms(s.all_served_us.saturating_sub(s.first_connect_us))),
            storm_replayed_per_stream: self.storm.as_ref().filter(|_| args.storm).map(|s| {
                Replayed {
                    streams: s.streams,
                    total: s.replayed_total,
                    min: s.replayed_min,
                    max: s.replayed_max,
                }
            }),
            connections_requested: args.connections,
            connections_started: c.requested,
            connections_established: c.established,
            connect_errors: c.connect_errors,
            protocol: match args.streams_per_connection() {
                Some(_) => "h2".to_owned(),
                None => "http/1.1".to_owned(),
            },
            connections: c.connections_opened,
            streams_per_connection: args.streams_per_connection().unwrap_or(1),
            h2_goaways: args.streams_per_connection().map(|_| c.h2_goaways),
            h2_goaway_streams: args.streams_per_connection().map(|_| c.h2_goaway_streams),
            h2_resets: args.streams_per_connection().map(|_| c.h2_resets),
            disconnects: c.disconnects,
            errors_by_kind: c.errors.clone(),
            messages_published: published,
            publish_errors: outcome.map(|o| o.errors.clone()).unwrap_or_default(),
            tls_error: tls_error.or_else(|| outcome.and_then(|o| o.tls_error.clone())),
            tls_resumed: c.tls_resumed,
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
            publishers: if args.publish_url.is_some() {
                args.publishers
            } else {
                0
            },
            server_processes: (!args.server_pid.is_empty()).then_some(args.server_pid.len() as u64),
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
            worker_errors: *worker_errors as u64,
            passed: false,
        };
        summary.passed = summary.failures().is_empty();
        summary
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_ends_every_wait_but_publishing_and_the_final_reports() {
        let all = [
            Phase::Connecting,
            Phase::Publishing,
            Phase::Holding,
            Phase::Settling,
            Phase::Draining,
            Phase::Finishing,
        ];
        let ended: Vec<&str> = all
            .iter()
            .filter(|p| p.ends_on_interrupt())
            .map(|p| p.label())
            .collect();
        assert_eq!(ended, ["connecting", "holding", "settling", "draining"]);
    }

    #[test]
    fn the_cost_of_several_processes_is_their_sum() {
        let at = |rss: [u64; 3], cpu: [u64; 3]| {
            Some(Sample::sum((0..3).map(|i| Sample {
                rss_bytes: rss[i],
                cpu_ns: cpu[i],
            })))
        };
        let server = Server {
            before: at([1_000, 2_000, 3_000], [0; 3]),
            // 100 streams spread unevenly: 60, 30 and 10 of them, 100 bytes each.
            connected: at([7_000, 5_000, 4_000], [0; 3]),
            cpu_start: at([0; 3], [1_000, 1_000, 1_000]),
            // Only two processes did any publishing work.
            cpu_end: at([0; 3], [301_000, 101_000, 1_000]),
            after: None,
        };
        let cost = ServerCost::of(&server, 100, 1_000);
        assert_eq!(cost.bytes_per_conn, Some(100.0));
        assert_eq!(cost.cpu_ns, Some(400_000));
        assert_eq!(cost.cpu_ns_per_delivery, Some(400.0));
        // No deliveries, or a process gone before the end: no CPU per delivery.
        assert_eq!(ServerCost::of(&server, 100, 0).cpu_ns_per_delivery, None);
        let gone = Server {
            cpu_end: None,
            ..server
        };
        assert_eq!(ServerCost::of(&gone, 0, 10), ServerCost::default());
    }
}
