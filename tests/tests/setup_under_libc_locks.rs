//! The allocator's process set-up runs at the first allocation, which may be one that
//! glibc makes while it holds one of its own non-recursive locks (inside `atexit` past
//! 32 handlers, inside `pthread_atfork` past 48). The set-up must then not call that
//! glibc function again: the exit report is run from `.fini_array` and the fork
//! handlers are registered from `.init_array` at load (`init::FORK_HANDLERS_AT_LOAD`).
//! `tests/c/setup_under_libc_locks.c` under `LD_PRELOAD`; each hung until killed before.

mod ffi_support;

use ffi_support::{compile, preloaded, run, Lang};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Far above what these few allocations take, even on a loaded machine; a deadlock is
/// what it catches.
const LIMIT: Duration = Duration::from_secs(60);

/// Compiled once per test binary (the tests run at once and would share the temporary
/// file `compile` renames into place).
fn program() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        compile(
            "setup_under_libc_locks.c",
            "setup_under_libc_locks",
            Lang::C,
            &[],
        )
    })
}

fn run_mode(mode: &str, options: &str) -> ffi_support::Outcome {
    let mut cmd = preloaded(program());
    cmd.arg(mode).env("RANGEALLOC_OPTIONS", options);
    let out = run(cmd, LIMIT);
    out.assert_success(mode);
    assert!(out.stdout.contains("ok 1"), "{mode}: {}", out.stdout);
    out
}

/// `stats=1` with the first allocation inside the 33rd `atexit`: the report still
/// prints at exit.
#[test]
fn stats_report_with_first_allocation_inside_atexit() {
    let out = run_mode("atexit", "stats=1");
    assert!(
        out.stderr.contains("rangealloc") && out.stderr.contains("statistics"),
        "the exit report:\n{}",
        out.stderr
    );
}

/// The first allocation inside the 49th `pthread_atfork`; a fork after it works.
#[test]
fn first_allocation_inside_pthread_atfork() {
    run_mode("atfork", "");
}

/// A fork before any allocation: the handlers registered at load run on an engine that
/// is not set up; both processes allocate after it.
#[test]
fn fork_before_the_first_allocation() {
    run_mode("fork-first", "");
}
