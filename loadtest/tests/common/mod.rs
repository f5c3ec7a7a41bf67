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
