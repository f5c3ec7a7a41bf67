//! Replacing the running binary without refusing a connection (`SIGUSR2`): the new binary is
//! started from the path this one was started with, with the same arguments and environment,
//! and inherits the listening sockets themselves. Both processes accept on them until the new
//! one says it is serving; then this one drains its streams (jittered `retry:`, as on
//! `SIGTERM`) and exits. If the new one fails to start or does not confirm in time, this one
//! never stopped accepting and goes on as if nothing happened.
//!
//! Streams themselves are not handed over yet: they reconnect to the new process once.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Names the inherited listening sockets (`3,4`) in the new process's environment.
pub const LISTENERS_ENV: &str = "SSE_EDGE_INHERITED_LISTENERS";
/// Names the pipe the new process writes `ready` to once it serves.
pub const READY_ENV: &str = "SSE_EDGE_UPGRADE_READY";
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

/// A new process that took over the listeners.
#[derive(Debug)]
pub struct Successor {
    /// Its process id.
    pub pid: u32,
    /// How long it took to say it serves.
    pub took: Duration,
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
    let names: Vec<String> = inherited
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    let mut child = Command::new(&origin.exe)
        .args(&origin.args)
        .env(LISTENERS_ENV, names.join(","))
        .env(READY_ENV, ready_child.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", origin.exe.display()))?;
    // The child has its copies now; ours would keep the pipe open past its death.
    drop(inherited);
    drop(ready_child);
    match wait_ready(ready_read, &mut child) {
        Ok(()) => Ok(Successor {
            pid: child.id(),
            took: started.elapsed(),
        }),
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{} {why}", origin.exe.display()))
        }
    }
}

/// Reads `ready` from the pipe within [`CONFIRM_TIMEOUT`]; EOF means the child died or
/// closed it without confirming.
fn wait_ready(pipe: OwnedFd, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + CONFIRM_TIMEOUT;
    let mut file = std::fs::File::from(pipe);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("did not confirm within {CONFIRM_TIMEOUT:?}"));
        }
        let mut poll = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, for the length given.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("cannot wait for it: {e}"));
        }
        if n == 0 {
            continue; // the deadline check above ends it
        }
        let mut buf = [0u8; 16];
        if let Ok(n) = file.read(&mut buf) {
            if buf.get(..n).is_some_and(|b| b.starts_with(b"ready")) {
                return Ok(());
            }
        }
        // The pipe closed: the child is most likely exiting; give it a moment to be reaped.
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited before serving ({status})"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        return Err("closed its pipe without serving".to_owned());
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
