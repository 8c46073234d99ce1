//! CPU time, memory and the open-file limit of a process, read from `/proc`
//! through the `procfs` crate (Linux; elsewhere a reading fails and no file
//! limit is known).

use serde::{Deserialize, Serialize};

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
        source: imp::ReadError,
    },
}

/// Reads a process's CPU time and memory.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    imp::sample(pid).map_err(|source| ProcError::Read { pid, source })
}

/// This process.
pub fn own() -> Sample {
    sample(std::process::id()).unwrap_or_default()
}

/// This process's soft limit on open files, if finite.
pub fn open_file_limit() -> Option<u64> {
    imp::open_file_limit()
}

#[cfg(target_os = "linux")]
mod imp {
    use procfs::process::{LimitValue, Process, Stat, Status};

    use super::Sample;

    pub type ReadError = procfs::ProcError;

    pub fn sample(pid: u32) -> Result<Sample, ReadError> {
        // No process has a pid beyond i32 (the kernel's pid_t).
        let pid = i32::try_from(pid).map_err(|_| {
            ReadError::NotFound(Some(std::path::PathBuf::from(format!("/proc/{pid}"))))
        })?;
        let process = Process::new(pid)?;
        Ok(of(
            &process.stat()?,
            &process.status()?,
            procfs::ticks_per_second(),
        ))
    }

    /// `utime + stime` in seconds (the kernel counts them in clock ticks), and
    /// `VmRSS` / `VmHWM` (absent for a kernel thread or a zombie: 0).
    pub fn of(stat: &Stat, status: &Status, ticks_per_second: u64) -> Sample {
        Sample {
            cpu_s: (stat.utime + stat.stime) as f64 / ticks_per_second.max(1) as f64,
            rss_kb: status.vmrss.unwrap_or(0),
            hwm_kb: status.vmhwm.unwrap_or(0),
        }
    }

    pub fn open_file_limit() -> Option<u64> {
        let limits = Process::myself().ok()?.limits().ok()?;
        match limits.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(n),
            LimitValue::Unlimited => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Sample;

    pub type ReadError = std::io::Error;

    pub fn sample(_pid: u32) -> Result<Sample, ReadError> {
        Err(ReadError::new(
            std::io::ErrorKind::Unsupported,
            "process readings need Linux's /proc",
        ))
    }

    pub fn open_file_limit() -> Option<u64> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use procfs::FromRead;
    use procfs::process::{Stat, Status};

    use super::*;

    #[test]
    fn ticks_become_seconds_and_a_name_may_hold_spaces() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = Stat::from_read(stat.as_bytes()).unwrap();
        assert_eq!(stat.comm, "my (odd) name");
        // A real status file (procfs wants its every field), with known memory.
        let status: String = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .map(|l| match l.split(':').next() {
                Some("VmHWM") => "VmHWM:\t    2048 kB\n".to_string(),
                Some("VmRSS") => "VmRSS:\t    1024 kB\n".to_string(),
                _ => format!("{l}\n"),
            })
            .collect();
        let status = Status::from_read(status.as_bytes()).unwrap();
        let s = imp::of(&stat, &status, 100);
        assert_eq!(
            s,
            Sample {
                cpu_s: 3.25,
                rss_kb: 1024,
                hwm_kb: 2048
            }
        );
        assert_eq!(imp::of(&stat, &status, 250).cpu_s, 1.3);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(sample(u32::MAX).is_err());
        assert!(sample(i32::MAX as u32).is_err());
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn cpu_time_counts_this_process_working() {
        let before = own().cpu_s;
        let mut x = 0u64;
        // Wait on the condition: the kernel accounts CPU time in clock ticks.
        while own().cpu_s <= before {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(own().cpu_s > before);
    }
}
