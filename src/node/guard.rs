//! Panics: the parsing of one request is contained, anything else ends the process.
//!
//! Parsing and validating a request is pure code over hostile bytes. If a missed overflow
//! still panics there, [`contain`] turns it into one closed connection and a logged location.
//! A panic anywhere else may have left a shard's state half-updated, so the shard does not go
//! on: [`run_shard`] logs it with the shard id and exits the process non-zero, and the
//! supervisor restarts it (its clients reconnect and replay). A node that silently lost one
//! shard would keep answering health checks with streams nobody serves.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use tracing::error;

/// Exit status of a process whose shard panicked or whose event loop failed (`EX_SOFTWARE`).
pub const EXIT_SHARD_FAILED: i32 = 70;

thread_local! {
    /// Set while [`contain`] runs, so the hook stays quiet and records where instead.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    /// Where the last contained panic happened (`file:line`), for the caller's log line.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the process's panic hook (once): quiet inside [`contain`], the default elsewhere.
///
/// A contained panic's message may quote the input that caused it; only its location is
/// kept, so no request byte reaches the log.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|c| *c.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

/// A panic caught by [`contain`]: where it happened, never what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contained {
    /// `file:line` of the panic, when known.
    pub location: Option<String>,
}

/// Runs `f`, turning a panic inside it into `Err`. For pure code over one request only:
/// whatever `f` mutates must be thrown away by the caller on `Err`.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Contained> {
    CONTAINED.with(|c| c.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(false));
    outcome.map_err(|_| Contained {
        location: LOCATION.with(|c| c.borrow_mut().take()),
    })
}

/// Runs one shard's loop to its end; a panic or a failed event loop ends the process.
///
/// Returns only after a normal stop (shutdown asked and the drain over).
pub fn run_shard(id: usize, run: impl FnOnce() -> std::io::Result<()>) {
    match panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(
                shard = id,
                error = %e,
                "shard event loop failed; exiting so the supervisor restarts the node"
            );
            std::process::exit(EXIT_SHARD_FAILED);
        }
        Err(_) => {
            error!(
                shard = id,
                "shard panicked (message above); exiting so the supervisor restarts the node"
            );
            std::process::exit(EXIT_SHARD_FAILED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_with_its_location_and_leaves_the_thread_usable() {
        install_hook();
        let caught = contain(|| {
            let v: Vec<u8> = Vec::new();
            std::hint::black_box(&v);
            if v.is_empty() {
                panic!("input {:?}", b"secret bytes");
            }
            1
        });
        let err = caught.unwrap_err();
        assert!(err.location.is_some());
        assert_eq!(contain(|| 2), Ok(2));
    }
}
