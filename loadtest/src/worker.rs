//! Worker processes: each is this same executable re-run in a hidden sub-mode, holding its
//! share of the streams in one event loop ([`client`](crate::client)).
//!
//! Why processes and not threads: the open-files limit is per process (20000 here, and it
//! cannot be raised), so past ~19.8k streams a second process is the only way to hold more.
//! A worker stops by itself when its plan's deadline passes or its parent goes away (its
//! stdin closes), so none outlives a run.

use std::io::{self, Read};
use std::process::{Child, ChildStdin, Command as Process, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use crate::client::Worker;
use crate::fdlimit;
use crate::wire::{self, Command, Plan, Report};

/// The hidden first argument that turns the executable into a worker.
pub const WORKER_ARG: &str = "__worker";

/// Entry point of a worker process: read the plan line, run, write the final report.
pub fn worker_main() -> ExitCode {
    // Ctrl-C reaches the whole process group; the parent decides when workers stop, so that
    // it can still collect what they measured.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if let Err(e) = fdlimit::raise_to_hard_limit() {
        eprintln!("loadtest worker: cannot raise the open-files limit: {e}");
    }
    let plan = match read_plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("loadtest worker: no plan: {e}");
            return ExitCode::from(2);
        }
    };
    let index = plan.worker;
    let result = Worker::new(plan).and_then(|w| w.run(&mut io::stdout().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest worker {index}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the first stdin line byte by byte: anything read past it would be lost to the
/// event loop, which reads the same descriptor raw.
fn read_plan() -> io::Result<Plan> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    serde_json::from_slice(&line).map_err(io::Error::other)
}

/// What a worker sent, as the parent sees it.
#[derive(Debug)]
pub enum Message {
    /// A report frame from worker `.0`.
    Frame(usize, Box<Report>, Vec<u8>),
    /// Worker `.0` closed its output (it exited), with the error if the stream broke.
    Gone(usize, Option<String>),
}

/// Sends commands to every worker; cloned into the publisher for closed-loop timestamps.
#[derive(Clone)]
pub struct Commander(Arc<Mutex<Vec<Option<ChildStdin>>>>);

impl Commander {
    /// Writes `command` to every worker still listening.
    pub fn send(&self, command: &Command) {
        let mut stdins = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for slot in stdins.iter_mut() {
            if let Some(stdin) = slot {
                if wire::write_line(stdin, command).is_err() {
                    *slot = None;
                }
            }
        }
    }

    /// Closes every pipe, which tells workers to finish.
    fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The running workers; dropping it stops and reaps them.
pub struct Workers {
    children: Vec<Child>,
    /// Commands to the workers.
    pub commander: Commander,
    /// Frames from all workers, in arrival order.
    pub messages: Receiver<Message>,
}

impl Workers {
    /// Starts one worker per plan.
    pub fn spawn(plans: Vec<Plan>) -> io::Result<Workers> {
        let exe = std::env::current_exe()?;
        let (tx, messages) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for plan in plans {
            let index = plan.worker;
            let mut child = Process::new(&exe)
                .arg(WORKER_ARG)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut stdin = child.stdin.take().expect("piped");
            let mut stdout = child.stdout.take().expect("piped");
            children.push(child);
            wire::write_line(&mut stdin, &plan)?;
            stdins.push(Some(stdin));
            let tx = tx.clone();
            std::thread::spawn(move || loop {
                match wire::read_frame(&mut stdout) {
                    Ok(Some((report, histogram))) => {
                        if tx
                            .send(Message::Frame(index, Box::new(report), histogram))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => return drop(tx.send(Message::Gone(index, None))),
                    Err(e) => return drop(tx.send(Message::Gone(index, Some(e.to_string())))),
                }
            });
        }
        Ok(Workers {
            children,
            commander: Commander(Arc::new(Mutex::new(stdins))),
            messages,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.commander.close();
        for child in &mut self.children {
            // A worker that already exited makes kill fail harmlessly.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
