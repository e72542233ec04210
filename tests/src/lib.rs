//! Shared helpers for the integration tests.

use std::process::{Command, Output};

pub mod phases;
pub mod tiling;

/// Minor page faults so far of `who`: `libc::RUSAGE_SELF` (the whole process) or
/// `libc::RUSAGE_THREAD` (the calling thread).
pub fn minor_faults(who: libc::c_int) -> u64 {
    // SAFETY: a plain syscall filling a zeroed `rusage` of ours.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(who, &mut usage), 0);
        usage.ru_minflt as u64
    }
}

/// Runs this test binary again, executing only its `child_entry` test with
/// `RANGEALLOC_TEST_CHILD=mode` (and `RANGEALLOC_OPTIONS=options` when given): the way
/// to test what aborts, options read once per process, and process-wide limits.
pub fn run_child(mode: &str, options: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("RANGEALLOC_TEST_CHILD", mode);
    if let Some(options) = options {
        cmd.env("RANGEALLOC_OPTIONS", options);
    }
    cmd.output().expect("run the test binary as a child")
}

/// `run_child`, asserting that the child succeeded and printed `PASSED mode`; its output
/// goes in the failure message. Returns its stderr (what it reported).
pub fn run_child_passing(mode: &str, options: &str) -> String {
    let out = run_child(mode, Some(options));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains(&format!("PASSED {mode}")),
        "child {mode} failed: {}\n{stdout}\n{stderr}",
        out.status,
    );
    stderr
}

/// xorshift64: deterministic, so a failure replays from its seed.
pub struct XorShift(pub u64);

impl XorShift {
    #[allow(clippy::should_implement_trait)] // an infinite generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Resident bytes of this process (`/proc/self/statm`).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

/// Seconds a stress test runs: `RANGEALLOC_STRESS_SECS`, else `default`.
pub fn stress_secs(default: u64) -> u64 {
    std::env::var("RANGEALLOC_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Stamped blocks for stress tests: every word of a block holds a value made of the
/// block's address and the word's index, so a block zeroed (a purge of memory in use),
/// written by someone else or handed out twice is caught.
pub mod stamped {
    fn stamp(p: usize, i: usize) -> usize {
        (p ^ 0x5bd1_e995_u64 as usize).wrapping_add(i.wrapping_mul(0x9e37_79b9))
    }

    /// Stamps the `size` bytes (a multiple of 8) of the live block at `p`.
    pub fn fill(p: usize, size: usize) {
        for i in 0..size / 8 {
            // SAFETY: the caller's contract: `size` bytes of a live block, 8-aligned.
            unsafe { (p as *mut usize).add(i).write(stamp(p, i)) };
        }
    }

    /// Panics unless the block at `p` still holds its stamps; `what` says who may have
    /// broken it.
    pub fn check(p: usize, size: usize, what: &str) {
        for i in 0..size / 8 {
            // SAFETY: as in `fill`.
            let word = unsafe { (p as *const usize).add(i).read() };
            assert_eq!(
                word,
                stamp(p, i),
                "block {p:#x} ({size} B) lost word {i} while {what}"
            );
        }
    }
}
