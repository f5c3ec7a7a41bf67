//! The `sse-edge` server: command line → config, listeners, shards, signals.

use std::io::IsTerminal;
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithRawSiginfo;
use signal_hook::iterator::SignalsInfo;
use sse_edge::auth::mint::{mint, unix_now, MintArgs};
use sse_edge::node::config::{ConfigError, LogFormat};
use sse_edge::node::fdlimit;
use sse_edge::node::handover::{self, Outcome};
use sse_edge::node::upgrade::{Greeting, Requested, UpgradeArgs};
use sse_edge::{Config, Server};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Exit code for a bad command line or a server that cannot start.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    if first.as_ref().is_some_and(|a| a == "token") {
        return token();
    }
    if first.as_ref().is_some_and(|a| a == "upgrade") {
        return upgrade();
    }
    if first.as_ref().is_some_and(|a| a == "help") {
        return help();
    }
    if first.as_ref().is_some_and(|a| a == "completions") {
        return completions();
    }
    if first.as_ref().is_some_and(|a| a == "man") {
        return man();
    }
    let config = match Config::parse_from_env() {
        Ok(config) => config,
        Err(ConfigError::Info(text)) => {
            print_out(&text);
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(line)) => return fail(&line),
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => return fail(&format!("invalid --log filter {:?}: {e}", config.log)),
    };
    // A log line that cannot be written (stderr closed) is lost, not a panic: by default the
    // subscriber reports it with eprintln!, which panics when stderr is gone, and a node
    // whose supervisor stopped reading its logs must still drain on SIGTERM.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
        LogFormat::Json => logs
            .with_ansi(false)
            .event_format(sse_edge::node::logs::JsonLines)
            .init(),
    }

    // Raised before binding (the stream cap is sized from it), told after: a node that
    // cannot start says so in exactly one line.
    let raised = fdlimit::raise_to_hard_limit();

    // Captured now: by the time of an upgrade the binary at this path may be a new one.
    let start_path = match sse_edge::node::upgrade::Origin::capture() {
        Ok(origin) => Some(origin),
        Err(e) => {
            warn!("cannot tell how this process was started; SIGUSR2 upgrades are off: {e}");
            None
        }
    };
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => return fail(&e.to_string()),
    };
    match raised {
        Ok((before, now)) => info!("open files limit: {now} (was {before})"),
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
    if let Some(queue) = sse_edge::node::listener::accept_queue() {
        // A storm larger than this per listener waits for the kernel's SYN retries.
        info!(
            "accept queue: {queue} connections per listener (asked {}, capped by net.core.somaxconn)",
            sse_edge::node::listener::BACKLOG
        );
    }
    // An upgrade by a binary that hands over its connections: take them before serving.
    let handover = match sse_edge::node::upgrade::handover_channel() {
        None => None,
        Some(Err(e)) => return fail(&format!("upgrade: {e}")),
        Some(Ok(channel)) => match handover::take(&channel, &server.handover_limits(), |part| {
            server.import_history(part)
        }) {
            Ok(Outcome::Taken(taken)) => {
                let streams = taken
                    .connections
                    .iter()
                    .map(|(r, _)| r.streams())
                    .sum::<usize>();
                info!(
                    streams,
                    connections = taken.connections.len(),
                    took_ms = taken.took.as_millis() as u64,
                    "upgrade: took over {streams} streams from the previous process"
                );
                server.take_over(taken);
                Some(channel)
            }
            Ok(Outcome::Refused(reason)) => {
                return fail(&format!(
                    "upgrade refused by the running process, which keeps serving: {reason}"
                ))
            }
            Err(why) => {
                return fail(&format!(
                    "upgrade: {why}; the running process keeps serving"
                ))
            }
        },
    };
    // Listeners are bound: connections wait in their backlogs from here on.
    match sse_edge::node::notify::ready(&format!("serving on {}", server.local_addr())) {
        Ok(_) => {}
        Err(e) => warn!("cannot tell systemd the node is ready (NOTIFY_SOCKET): {e}"),
    }
    match &handover {
        Some(channel) => handover::serving(channel),
        None => match sse_edge::node::upgrade::confirm() {
            Ok(true) => {
                info!("upgrade: this process took over the listeners; the old one drains")
            }
            Ok(false) => {}
            Err(e) => warn!("upgrade: cannot tell the old process this one serves: {e}"),
        },
    }
    drop(handover);
    let listener_fds = server.listener_fds();
    let control = server.control();
    let mut signals = match SignalsInfo::<WithRawSiginfo>::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2]) {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    std::thread::spawn(move || {
        let mut asked = false;
        for info in signals.forever() {
            let signal = info.si_signo;
            // `sse-edge upgrade` queues its SIGUSR2 and waits to be told of a failure.
            // SAFETY: si_pid is filled for signals sent by a process, as a queued one is.
            let asker = (info.si_code == libc::SI_QUEUE).then(|| unsafe { info.si_pid() });
            if signal == SIGHUP {
                // Re-read what lives in files; a failed reload keeps what is in use.
                let outcomes = control.reload();
                if outcomes.is_empty() {
                    info!("SIGHUP: nothing to reload (no key files)");
                }
                for outcome in outcomes {
                    match outcome {
                        Ok(line) => info!("SIGHUP: {line}"),
                        Err(line) => warn!("SIGHUP: {line}"),
                    }
                }
                continue;
            }
            if signal == SIGUSR2 {
                if asked {
                    warn!("SIGUSR2 while shutting down: no upgrade");
                    sse_edge::node::upgrade::tell_failed(asker);
                    continue;
                }
                let Some(start_path) = &start_path else {
                    warn!("SIGUSR2: upgrades are off (see the start-up log)");
                    sse_edge::node::upgrade::tell_failed(asker);
                    continue;
                };
                info!("SIGUSR2: starting the new binary with the listeners");
                let successor = match sse_edge::node::upgrade::start(start_path, &listener_fds) {
                    Ok(successor) => successor,
                    Err(why) => {
                        warn!("upgrade failed, this process keeps serving: {why}");
                        sse_edge::node::upgrade::tell_failed(asker);
                        continue;
                    }
                };
                let pid = successor.pid;
                match &successor.greeting {
                    Greeting::Ready => info!(
                        pid,
                        took_ms = successor.took.as_millis() as u64,
                        "upgrade: the new process serves without taking connections; this one drains and exits"
                    ),
                    Greeting::Hello(channel, hello) => match control.hand_over(channel, hello) {
                        Ok(given) => info!(
                            pid,
                            streams = given.streams,
                            connections = given.connections,
                            paused_ms = given.paused.as_millis() as u64,
                            "upgrade: handed {} streams to the new process; this one drains what is left and exits",
                            given.streams
                        ),
                        Err(why) => {
                            warn!("upgrade failed, this process keeps serving: {why}");
                            successor.stop();
                            sse_edge::node::upgrade::tell_failed(asker);
                            continue;
                        }
                    },
                }
                let main_pid = format!("MAINPID={pid}");
                if let Err(e) = sse_edge::node::notify::notify(&main_pid) {
                    warn!("cannot tell systemd the new main pid: {e}");
                }
                asked = true;
                control.shutdown();
                continue;
            }
            if asked {
                // A second signal means now.
                std::process::exit(128 + signal);
            }
            asked = true;
            // Logged before asking: once the shards are done the process exits at once, and
            // the line would be lost (a log line that cannot be written is dropped, not a
            // panic, so this order is safe).
            info!(signal, "shutting down");
            if let Err(e) = sse_edge::node::notify::stopping() {
                warn!("cannot tell systemd the node is stopping: {e}");
            }
            control.shutdown();
        }
    });

    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A subcommand's arguments, parsed with its name as typed (so that usage lines read
/// `sse-edge token`); `--help` and errors are answered here, as the `Err` exit code.
fn subcommand<T>(
    name: &str,
    parse: fn(Vec<std::ffi::OsString>) -> Result<T, clap::Error>,
) -> Result<T, ExitCode> {
    let args = std::iter::once(name.into())
        .chain(std::env::args_os().skip(2))
        .collect();
    parse(args).map_err(|e| {
        if e.use_stderr() {
            fail(&sse_edge::node::config::one_line(&e.render().to_string()))
        } else {
            print_out(&e.render().to_string());
            ExitCode::SUCCESS
        }
    })
}

/// `sse-edge help [token|upgrade]`: what `--help` prints, for the server or a subcommand.
fn help() -> ExitCode {
    let topic = std::env::args_os().nth(2);
    let text = match topic.as_ref().and_then(|t| t.to_str()) {
        None => match Config::parse_args(["sse-edge", "--help"]) {
            Err(ConfigError::Info(text)) => text,
            Ok(_) | Err(ConfigError::Invalid(_)) => return fail("cannot render --help"),
        },
        Some("token") => help_text("sse-edge token", MintArgs::parse_args),
        Some("upgrade") => help_text("sse-edge upgrade", UpgradeArgs::parse_args),
        Some(other) => {
            let line =
                format!("no help on {other:?}: try sse-edge help, help token or help upgrade");
            return fail(&line);
        }
    };
    print_out(&text);
    ExitCode::SUCCESS
}

/// A subcommand's `--help` text.
fn help_text<T>(
    name: &str,
    parse: fn(Vec<std::ffi::OsString>) -> Result<T, clap::Error>,
) -> String {
    match parse(vec![name.into(), "--help".into()]) {
        Ok(_) => String::new(),
        Err(e) => e.render().to_string(),
    }
}

/// `sse-edge completions SHELL`: the shell's completion script, generated from the same
/// definition as `--help`.
fn completions() -> ExitCode {
    use clap::ValueEnum;
    let name = std::env::args_os().nth(2);
    let shell = name
        .as_ref()
        .and_then(|s| s.to_str())
        .and_then(|s| clap_complete::Shell::from_str(s, true).ok());
    let Some(shell) = shell else {
        let names: Vec<String> = clap_complete::Shell::value_variants()
            .iter()
            .map(|s| s.to_string())
            .collect();
        return fail(&format!(
            "completions: name a shell: sse-edge completions {}",
            names.join("|")
        ));
    };
    if std::env::args_os().nth(3).is_some() {
        return fail("completions: one shell only");
    }
    let mut out = Vec::new();
    clap_complete::generate(
        shell,
        &mut sse_edge::node::config::full_command(),
        "sse-edge",
        &mut out,
    );
    print_out(&String::from_utf8_lossy(&out));
    ExitCode::SUCCESS
}

/// `sse-edge man`: the manual page (roff), generated from the same definition as `--help`.
fn man() -> ExitCode {
    if std::env::args_os().nth(2).is_some() {
        return fail("man takes no arguments: sse-edge man > sse-edge.1");
    }
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(sse_edge::node::config::full_command()).render(&mut out) {
        return fail(&format!("man: cannot render the page: {e}"));
    }
    print_out(&String::from_utf8_lossy(&out));
    ExitCode::SUCCESS
}

/// `sse-edge token ...`: prints a signed token.
fn token() -> ExitCode {
    let args = match subcommand("sse-edge token", MintArgs::parse_args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    match mint(&args, unix_now()) {
        Ok(token) => {
            print_out(&format!("{token}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `sse-edge upgrade --pid PID`: upgrades a running node and waits to see it done.
fn upgrade() -> ExitCode {
    let args = match subcommand("sse-edge upgrade", UpgradeArgs::parse_args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let timeout = std::time::Duration::from_secs(args.timeout);
    match sse_edge::node::upgrade::request(args.pid, timeout) {
        Ok(Requested::Done(Some(new))) => {
            print_out(&format!(
                "pid {} handed over and exited; the node is now pid {new}\n",
                args.pid
            ));
            ExitCode::SUCCESS
        }
        Ok(Requested::Done(None)) => {
            print_out(&format!(
                "pid {} exited (no new process was seen)\n",
                args.pid
            ));
            ExitCode::SUCCESS
        }
        Ok(Requested::Failed) => {
            eprintln!(
                "sse-edge: pid {} says the upgrade failed and keeps serving (its log says why)",
                args.pid
            );
            ExitCode::FAILURE
        }
        Ok(Requested::StillRunning) => {
            eprintln!(
                "sse-edge: pid {} is still running after {}s: the upgrade failed and it keeps serving, or its drain is not over (see its log)",
                args.pid, args.timeout
            );
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}

/// Writes to stdout; a reader that went away (`sse-edge --help | head`) is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Prints one line on stderr and returns the usage exit code.
fn fail(line: &str) -> ExitCode {
    eprintln!("sse-edge: {line}");
    ExitCode::from(EXIT_USAGE)
}
