//! The open-files limit: every connection is a descriptor, so it caps how many streams a
//! process can hold.

use std::io;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft before, soft now).
pub fn raise_to_hard_limit() -> io::Result<(u64, u64)> {
    let mut lim = get()?;
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads a plain struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// The current soft `RLIMIT_NOFILE`.
pub fn soft_limit() -> io::Result<u64> {
    Ok(get()?.rlim_cur)
}

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a plain struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let (_, now) = super::raise_to_hard_limit().unwrap();
        let (again, same) = super::raise_to_hard_limit().unwrap();
        assert_eq!((again, same), (now, now));
    }
}
