//! Replacing the running binary without refusing a connection (`SIGUSR2`): the new binary is
//! started from the path this one was started with, with the same arguments and environment,
//! and inherits the listening sockets themselves and one end of the hand-over socket.
//!
//! A new binary that speaks the hand-over says hello on that socket, and [`crate::node::handover`]
//! moves the connections to it. One that does not (an older binary, in a rollback) writes
//! `ready` to a pipe once it serves: then this process drains its streams (jittered
//! `retry:`, as on `SIGTERM`) and they reconnect once. If the new one fails to start or does
//! not answer in time, this one goes on as if nothing happened.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::node::handover::wire::{Hello, Message};
use crate::node::handover::{Channel, ANSWER_MESSAGE, PATIENCE};

/// Names the inherited listening sockets (`3,4`) in the new process's environment.
pub const LISTENERS_ENV: &str = "SSE_EDGE_INHERITED_LISTENERS";
/// Names the pipe the new process writes `ready` to once it serves (without a hand-over).
pub const READY_ENV: &str = "SSE_EDGE_UPGRADE_READY";
/// Names the new process's end of the hand-over socket.
pub const HANDOVER_ENV: &str = "SSE_EDGE_HANDOVER";
/// How long the new process has to say it is serving.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How this process was started, captured at start: the binary's path then (the file may be
/// replaced by the time of the upgrade; the path is what is run) and the arguments.
#[derive(Debug, Clone)]
pub struct Origin {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Origin {
    /// The path and arguments this process was started with.
    pub fn capture() -> io::Result<Origin> {
        let mut args = std::env::args_os();
        let argv0 = args.next().map(PathBuf::from).unwrap_or_default();
        // argv[0] as typed names the file to run later (a symlink `current -> v2` switches
        // with it); /proc/self/exe would name this very inode, replaced or not.
        let exe = if argv0.components().count() > 1 {
            std::env::current_dir()?.join(argv0)
        } else {
            std::env::current_exe()?
        };
        Ok(Origin {
            exe,
            args: args.collect(),
        })
    }
}

/// A new process that has the listeners.
#[derive(Debug)]
pub struct Successor {
    /// Its process id.
    pub pid: u32,
    /// How long it took to answer.
    pub took: Duration,
    /// What it said.
    pub greeting: Greeting,
    child: Child,
}

/// What the new process said first.
#[derive(Debug)]
pub enum Greeting {
    /// It serves, and takes no connections (a binary without the hand-over): this process
    /// drains.
    Ready,
    /// It asks for the connections.
    Hello(Channel, Hello),
}

impl Successor {
    /// Stops the new process: the hand-over failed and this process keeps serving. It is
    /// given a second to exit by itself (it was told, or it failed), so it can say why.
    pub fn stop(mut self) {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the new binary with `listeners` inherited, and waits for it to confirm. On any
/// failure the new process is stopped and the error says why in one line.
pub fn start(origin: &Origin, listeners: &[RawFd]) -> Result<Successor, String> {
    let started = Instant::now();
    let (ready_read, ready_write) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    // Inheritable copies: dup() clears close-on-exec on the copy only.
    let inherited: Vec<OwnedFd> = listeners
        .iter()
        .map(|&fd| dup(fd))
        .collect::<io::Result<_>>()
        .map_err(|e| format!("cannot share the listeners: {e}"))?;
    let ready_child =
        dup(ready_write.as_raw_fd()).map_err(|e| format!("cannot share the pipe: {e}"))?;
    drop(ready_write);
    let (channel, theirs) =
        Channel::pair().map_err(|e| format!("cannot make the hand-over socket: {e}"))?;
    let channel = channel.with_max_message(ANSWER_MESSAGE);
    let handover_child =
        dup(theirs.as_raw_fd()).map_err(|e| format!("cannot share the hand-over socket: {e}"))?;
    drop(theirs);
    let names: Vec<String> = inherited
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    let mut child = Command::new(&origin.exe)
        .args(&origin.args)
        .env(LISTENERS_ENV, names.join(","))
        .env(READY_ENV, ready_child.as_raw_fd().to_string())
        .env(HANDOVER_ENV, handover_child.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", origin.exe.display()))?;
    // The child has its copies now; ours would keep the pipe open past its death.
    drop(inherited);
    drop(ready_child);
    drop(handover_child);
    match wait_greeting(ready_read, channel, &mut child) {
        Ok(greeting) => Ok(Successor {
            pid: child.id(),
            took: started.elapsed(),
            greeting,
            child,
        }),
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{} {why}", origin.exe.display()))
        }
    }
}

/// Waits within [`CONFIRM_TIMEOUT`] for `hello` on the hand-over socket or `ready` on the
/// pipe; EOF on the pipe means the child died or closed it without either.
fn wait_greeting(pipe: OwnedFd, channel: Channel, child: &mut Child) -> Result<Greeting, String> {
    let deadline = Instant::now() + CONFIRM_TIMEOUT;
    let mut file = std::fs::File::from(pipe);
    // A new binary that hands over closes the pipe unused: from then on only the socket (or
    // the child's exit) can answer.
    let mut pipe_open = true;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before serving ({status})"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("did not answer within {CONFIRM_TIMEOUT:?}"));
        }
        let mut polls = [
            libc::pollfd {
                fd: channel.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Short waits: a child that dies is noticed by try_wait above.
        let ms = i32::try_from(left.as_millis().min(100)).unwrap_or(100);
        let count = if pipe_open { 2 } else { 1 };
        // SAFETY: `count` valid pollfds.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), count, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("cannot wait for it: {e}"));
        }
        if polls[0].revents & libc::POLLIN != 0 {
            channel
                .set_timeout(PATIENCE)
                .map_err(|e| format!("cannot use the hand-over socket: {e}"))?;
            return match channel.recv() {
                Ok((Message::Hello(hello), _)) => Ok(Greeting::Hello(channel, hello)),
                Ok((other, _)) => Err(format!("said {} instead of Hello", other.name())),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // Its end closed: most likely it is exiting; give it a moment to be reaped.
                    for _ in 0..100 {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(format!("exited before serving ({status})"));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err("closed the hand-over socket without a word".to_owned())
                }
                Err(e) => Err(format!("sent no usable Hello: {e}")),
            };
        }
        if pipe_open && polls[1].revents != 0 {
            let mut buf = [0u8; 16];
            match file.read(&mut buf) {
                Ok(n) if buf.get(..n).is_some_and(|b| b.starts_with(b"ready")) => {
                    return Ok(Greeting::Ready)
                }
                _ => pipe_open = false,
            }
        }
    }
}

/// In the new process: the listeners inherited from the old one, if this is an upgrade.
pub fn inherited_listeners() -> Option<Result<Vec<std::net::TcpListener>, String>> {
    let names = std::env::var(LISTENERS_ENV).ok()?;
    std::env::remove_var(LISTENERS_ENV);
    Some(
        names
            .split(',')
            .map(|name| {
                let fd: RawFd = name
                    .parse()
                    .map_err(|_| format!("{LISTENERS_ENV}: {name:?} is not a descriptor"))?;
                adopt(fd).map_err(|e| format!("{LISTENERS_ENV}: descriptor {fd}: {e}"))
            })
            .collect(),
    )
}

/// Takes ownership of a descriptor our parent named to us in the environment.
fn inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on any integer is safe; it fails for one that is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was given to this process alone;
    // from here on it is owned once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of an inherited descriptor that must be a listening TCP socket.
fn adopt(fd: RawFd) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::from(inherited(fd)?);
    if !socket.is_listener()? {
        return Err(io::Error::other("not a listening socket"));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// In the new process: the hand-over socket the old one gave it, if this is an upgrade by a
/// binary that hands over its connections.
pub fn handover_channel() -> Option<Result<Channel, String>> {
    let name = std::env::var(HANDOVER_ENV).ok()?;
    std::env::remove_var(HANDOVER_ENV);
    // Without a hand-over the pipe is how the old process learns this one serves; with
    // one, the socket is: the pipe is closed unused.
    if let Ok(pipe) = std::env::var(READY_ENV) {
        std::env::remove_var(READY_ENV);
        if let Ok(fd) = pipe.parse::<RawFd>() {
            drop(inherited(fd));
        }
    }
    let adopted = name
        .parse::<RawFd>()
        .map_err(|_| format!("{HANDOVER_ENV}: {name:?} is not a descriptor"))
        .and_then(|fd| {
            inherited(fd)
                .and_then(Channel::adopt)
                .map_err(|e| format!("{HANDOVER_ENV}: descriptor {fd}: {e}"))
        });
    Some(adopted.and_then(|channel| {
        channel
            .set_timeout(PATIENCE)
            .map_err(|e| format!("{HANDOVER_ENV}: {e}"))
            .map(|()| channel)
    }))
}

/// In the new process, once it serves: tells the old one, which then drains and exits.
pub fn confirm() -> io::Result<bool> {
    let Ok(name) = std::env::var(READY_ENV) else {
        return Ok(false);
    };
    std::env::remove_var(READY_ENV);
    let fd: RawFd = name
        .parse()
        .map_err(|_| io::Error::other(format!("{READY_ENV}: {name:?} is not a descriptor")))?;
    let mut pipe = std::fs::File::from(inherited(fd)?);
    std::io::Write::write_all(&mut pipe, b"ready\n")?;
    Ok(true)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A copy of `fd` without close-on-exec, so a child inherits it.
fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: dup on a descriptor we hold; the result is new and ours.
    let copy = unsafe { libc::dup(fd) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created by dup, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `sse-edge upgrade`: asks a running node to upgrade, and waits to see it done.
#[derive(Debug, clap::Parser)]
#[command(
    name = "sse-edge upgrade",
    about = "Upgrade a running node without disconnecting its streams: send it SIGUSR2, then wait until it has handed everything to the binary at its start path and exited.",
    after_help = "Exit status: 0 once the node handed over and exited (the new process's pid is printed); 1 as soon as the node says the upgrade failed (it keeps serving; its log says why), or if it is still running after --timeout (its drain of TLS streams is not over); 2 for a bad command line or no such process.\n\nExample (systemd): ExecReload=/usr/local/bin/sse-edge upgrade --pid $MAINPID"
)]
pub struct UpgradeArgs {
    /// The running node's process id.
    #[arg(long, value_name = "PID")]
    pub pid: i32,

    /// Seconds to wait for the node to exit.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
}

impl UpgradeArgs {
    /// Parses the subcommand's arguments (the first is the program name).
    pub fn parse_args<I, T>(args: I) -> Result<UpgradeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        <UpgradeArgs as clap::Parser>::try_parse_from(args)
    }
}

/// How an upgrade asked with [`request`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested {
    /// The node exited; its successor, when one was seen, is this pid.
    Done(Option<i32>),
    /// Still running after the timeout.
    StillRunning,
    /// The node said the upgrade failed; it keeps serving.
    Failed,
}

/// The signal a node sends back to whoever asked for an upgrade with [`request`], when the
/// upgrade failed and it keeps serving. Only a request sent with `sigqueue` (as [`request`]
/// sends it) is answered, so a plain `kill -USR2` from anyone else never earns its sender a
/// signal it did not ask for.
pub const FAILED: libc::c_int = libc::SIGUSR1;

/// Tells `asker` (the process that queued the `SIGUSR2`, if one did) that the upgrade failed.
pub fn tell_failed(asker: Option<i32>) {
    let Some(pid) = asker.filter(|&p| p > 0 && p != std::process::id() as i32) else {
        return;
    };
    let value = libc::sigval {
        sival_ptr: std::ptr::null_mut(),
    };
    // SAFETY: sigqueue with a checked positive pid; a gone asker is only an error return.
    let _ = unsafe { libc::sigqueue(pid, FAILED, value) };
}

/// Blocks [`FAILED`] in this thread so that it waits in the queue for `sigtimedwait`.
fn block_failed() -> io::Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset is initialised by sigemptyset before use; the calls only touch
    // this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, FAILED);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits up to `wait` for [`FAILED`] from `pid`; whether it came.
fn failed_within(set: &libc::sigset_t, pid: i32, wait: Duration) -> bool {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::c_long::try_from(wait.as_nanos().min(999_999_999)).unwrap_or(0),
    };
    // SAFETY: the set was built by block_failed; info is written by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::sigtimedwait(set, &mut info, &timeout) };
    // SAFETY: si_pid is valid for a queued signal, which is what arrived.
    got == FAILED && unsafe { info.si_pid() } == pid
}

/// Sends `SIGUSR2` to `pid` and waits up to `timeout` for it to exit; the successor is the
/// process that then holds its listening sockets.
pub fn request(pid: i32, timeout: Duration) -> Result<Requested, String> {
    if pid <= 0 {
        return Err(format!("--pid {pid} is not a process id"));
    }
    let listeners = listening_sockets(pid);
    let failed = block_failed().map_err(|e| format!("cannot wait for the node's answer: {e}"))?;
    let value = libc::sigval {
        sival_ptr: std::ptr::null_mut(),
    };
    // Queued, not killed: the node answers a queued request when the upgrade fails.
    // SAFETY: sigqueue with a checked positive pid.
    if unsafe { libc::sigqueue(pid, libc::SIGUSR2, value) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0;
        // A zombie (a parent that has not reaped it yet) has exited too.
        if !exists || is_zombie(pid) {
            return Ok(Requested::Done(holder_of(&listeners, pid)));
        }
        if Instant::now() >= deadline {
            return Ok(Requested::StillRunning);
        }
        if failed_within(&failed, pid, Duration::from_millis(50)) {
            return Ok(Requested::Failed);
        }
    }
}

/// The socket inodes of `pid`'s listening TCP sockets (from `/proc`; empty if unreadable).
fn listening_sockets(pid: i32) -> Vec<String> {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // st 0A is LISTEN; the inode is the tenth field.
                    (fields.get(3) == Some(&"0A"))
                        .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    socket_links(pid)
        .into_iter()
        .filter(|link| listening.contains(link))
        .collect()
}

/// What `pid`'s descriptors that are sockets point at (`socket:[inode]`).
fn socket_links(pid: i32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| link.to_str().map(str::to_owned))
        .filter(|link| link.starts_with("socket:["))
        .collect()
}

/// Another process that holds one of `sockets` (the successor that inherited them).
fn holder_of(sockets: &[String], not: i32) -> Option<i32> {
    if sockets.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            (pid != not && socket_links(pid).iter().any(|l| sockets.contains(l))).then_some(pid)
        })
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}
