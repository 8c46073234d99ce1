//! Settings of the process's memory allocator, applied before any thread starts.
//!
//! glibc's malloc gives each thread that allocates an arena of its own (up to
//! eight per core) and keeps what is freed there for reuse: after a burst of
//! thousands of handshakes, the freed buffers stay in the process's RSS,
//! spread over many arenas. Capping the arenas at [`DEFAULT_ARENA_MAX`] keeps an
//! idle connection's memory small (BENCHMARKS.md, "Idle connections") at no
//! measurable cost to the fan-out, whose threads allocate little. glibc reads
//! `MALLOC_ARENA_MAX` from the environment itself; when it is set, that value
//! applies and nothing here overrides it.

/// Arenas when `MALLOC_ARENA_MAX` is not set.
pub const DEFAULT_ARENA_MAX: i32 = 2;

/// Caps glibc's malloc arenas unless the environment chose a value. Call it
/// first thing in `main`, before the runtime starts its threads.
pub fn cap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called
        // before this process starts any other thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, DEFAULT_ARENA_MAX);
        }
    }
}
