//! Timestamps that mean the same in every process: `CLOCK_MONOTONIC` in microseconds.
//!
//! The publisher stamps a message in one process and a worker reads it in another, so
//! `Instant` (opaque, per process in principle) will not do; on Linux `CLOCK_MONOTONIC` is
//! one system-wide clock, unaffected by wall-clock steps.

/// Microseconds on the system-wide monotonic clock.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a plain struct we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_back() {
        let a = super::now_us();
        let b = super::now_us();
        assert!(a > 0 && b >= a);
    }
}
