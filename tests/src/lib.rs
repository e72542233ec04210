//! Shared helpers for the integration tests.

use std::process::{Command, Output};

pub mod tiling;

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
