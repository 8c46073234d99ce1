//! CPU time and memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux).

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `utime`/`stime`: `USER_HZ`, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident memory now, KiB.
    pub rss_kb: u64,
    /// Peak resident memory since the process started, KiB.
    pub hwm_kb: u64,
}

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(
        "cannot read /proc/{pid}: {source} (is --server-pid right, and is the process still running?)"
    )]
    Read {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected format of /proc/{0}/stat")]
    Format(u32),
}

/// Reads a process's CPU time and memory.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|source| ProcError::Read { pid, source })
    };
    let cpu_s = parse_stat(&read("stat")?).ok_or(ProcError::Format(pid))?;
    let status = read("status")?;
    Ok(Sample {
        cpu_s,
        rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

/// This process.
pub fn own() -> Sample {
    sample(std::process::id()).unwrap_or_default()
}

/// This process's soft limit on open files (`/proc/self/limits`), if finite.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `utime + stime` in seconds. The command name (field 2) is in parentheses and
/// may contain spaces, so fields are counted after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some(3.25));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn open_file_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(parse_open_files(limits), Some(20_000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(unlimited), None);
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(sample(u32::MAX).is_err());
    }
}
