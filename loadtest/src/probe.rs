//! The server's side of the bill, read from /proc: resident memory and CPU time of every
//! process given with `--server-pid` (a process's `stat` counts all of its threads).

use std::io;

/// One reading of all measured server processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, nanoseconds (clock-tick resolution).
    pub cpu_ns: u64,
}

impl Sample {
    /// Several processes read as one server: their RSS and their CPU time added up.
    pub fn sum(samples: impl IntoIterator<Item = Sample>) -> Sample {
        samples
            .into_iter()
            .fold(Sample::default(), |total, one| Sample {
                rss_bytes: total.rss_bytes + one.rss_bytes,
                cpu_ns: total.cpu_ns + one.cpu_ns,
            })
    }
}

/// Reads `/proc/PID/stat` of each pid and sums them.
pub fn sample(pids: &[u32]) -> io::Result<Sample> {
    let mut each = Vec::with_capacity(pids.len());
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| io::Error::new(e.kind(), format!("server pid {pid}: {e}")))?;
        let one = parse_stat(&stat, page_size(), clock_ticks()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: unreadable"),
            )
        })?;
        each.push(one);
    }
    Ok(Sample::sum(each))
}

/// Like [`sample`], for readings taken once the run is under way: `None` when a measured
/// process has exited since (an upgraded server hands its streams to a new pid and the old
/// one exits), so the run goes on and its server figures are left out; other errors as
/// [`sample`].
pub fn sample_if_running(pids: &[u32]) -> io::Result<Option<Sample>> {
    match sample(pids) {
        Ok(sample) => Ok(Some(sample)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses a `/proc/PID/stat` line: utime and stime are fields 14 and 15, rss (pages) 24.
pub fn parse_stat(stat: &str, page: u64, ticks_per_sec: u64) -> Option<Sample> {
    // The command name (field 2) may hold spaces and parentheses; fields resume after the
    // last `)`, with field 3 first.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    Some(Sample {
        rss_bytes: field(24)? * page,
        cpu_ns: ticks * 1_000_000_000 / ticks_per_sec.max(1),
    })
}

/// The soft open-files limit of `pid`, from `/proc/PID/limits` (bounds its streams).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This machine's memory, bytes (`MemTotal`).
pub fn mem_total_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let stat = "4242 (sse edge) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 3 0 100 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat, 4096, 100).unwrap();
        assert_eq!(s.rss_bytes, 2500 * 4096);
        assert_eq!(s.cpu_ns, 2_000_000_000);
        assert!(parse_stat("garbage", 4096, 100).is_none());
    }

    #[test]
    fn several_processes_add_up() {
        let stat = |utime: u64, rss: u64| {
            format!("1 (sse-edge) S 1 1 1 0 -1 0 0 0 0 0 {utime} 0 0 0 20 0 3 0 100 1 {rss} 0")
        };
        let one = parse_stat(&stat(100, 1000), 4096, 100).unwrap();
        let two = parse_stat(&stat(50, 3000), 4096, 100).unwrap();
        let total = Sample::sum([one, two]);
        assert_eq!(total.rss_bytes, 4000 * 4096);
        assert_eq!(total.cpu_ns, 1_500_000_000);
        assert_eq!(Sample::sum([]), Sample::default());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = sample(&[me]).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(open_files_limit(me).unwrap() > 0);
        assert!(mem_total_bytes().unwrap() > 0);
        assert!(sample(&[u32::MAX]).is_err());
    }

    #[test]
    fn a_process_that_exited_reads_as_none() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap(); // reaped: its /proc entry is gone
        let me = std::process::id();
        assert!(sample_if_running(&[me]).unwrap().is_some());
        assert_eq!(sample_if_running(&[me, pid]).unwrap(), None);
        assert!(sample(&[pid]).is_err());
    }
}
