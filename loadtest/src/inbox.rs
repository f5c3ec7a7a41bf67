//! The parent's command pipe, as a worker reads it: without blocking, whole lines only.
//!
//! This is the worker's side of [`wire`](crate::wire)'s command lines. The loop reads it when
//! poll says the pipe is readable, and once more when the [`Meter`](crate::meter::Meter)
//! needs a command not seen yet (see [`Meter::needs_commands`](crate::meter::Meter::needs_commands)).

use std::io;

use crate::wire::Command;

/// A non-blocking pipe of JSON command lines.
pub struct Inbox {
    fd: i32,
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    /// The parent closed the pipe (or it broke): it is gone.
    closed: bool,
}

impl Inbox {
    /// Reads commands from `fd`, which the caller has made non-blocking; a negative `fd`
    /// reads as a closed pipe.
    pub fn new(fd: i32) -> Inbox {
        Inbox {
            fd,
            partial: Vec::new(),
            closed: false,
        }
    }

    /// The parent closed the pipe: it is gone.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Reads every complete command line waiting in the pipe; a line that is not a command
    /// is reported on stderr and skipped.
    pub fn read(&mut self) -> Vec<Command> {
        let mut buf = [0u8; 4096];
        while !self.closed {
            // SAFETY: reads into a buffer we own, at most its length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.partial.extend_from_slice(&buf[..n as usize]);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                _ if n == 0 => self.closed = true,
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => break,
                _ => self.closed = true,
            }
        }
        let mut commands = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            match serde_json::from_slice::<Command>(&line) {
                Ok(command) => commands.push(command),
                Err(e) => eprintln!("loadtest worker: bad command: {e}"),
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A non-blocking pipe: (read end, write end).
    fn pipe() -> (i32, i32) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors of an array we own.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        (fds[0], fds[1])
    }

    fn write(fd: i32, bytes: &[u8]) {
        // SAFETY: writes from a slice we own, at most its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    #[test]
    fn reads_whole_lines_keeps_a_partial_one_and_sees_the_close() {
        let (r, w) = pipe();
        let mut inbox = Inbox::new(r);
        assert!(inbox.read().is_empty());
        write(w, b"{\"cmd\":\"start\"}\n{\"cmd\":\"sent\",\"seq\":3,");
        assert_eq!(inbox.read(), vec![Command::Start]);
        write(w, b"\"at_us\":7}\nnot json\n");
        assert_eq!(inbox.read(), vec![Command::Sent { seq: 3, at_us: 7 }]);
        assert!(!inbox.closed());
        // SAFETY: closes descriptors this test opened.
        unsafe { libc::close(w) };
        assert!(inbox.read().is_empty());
        assert!(inbox.closed());
        unsafe { libc::close(r) };
    }
}
