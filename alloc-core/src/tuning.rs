//! Run-time changes of the options that can change safely while the program runs: the
//! purge delay, the background purger, the report at exit and the dirty budget (the
//! others shape memory already handed out, or the fast path, and stay as parsed).
//! Owns the exit report (armed once, run from `.fini_array`); stores values through
//! `options` and calls `purge`, `snapshot`, `reclaim` (the background purger's thread)
//! and `os` (the clock) to apply them.

use crate::{options, os, purge};
use core::sync::atomic::{AtomicBool, Ordering};

/// Sets the purge delay: free pages dirty for this long are purged by the next pass
/// (`options::PURGE_NEVER`: only explicit purges and the dirty budget return memory).
/// Heaps pick the new delay up at their next purge check, the background purger within
/// a second.
pub fn set_purge_delay_ms(ms: u64) {
    options::put_purge_delay_ms(ms);
}

/// Switches the background purger on (starting its thread the first time) or off (the
/// thread stays, asleep, and purges again when switched back on).
pub fn set_background_purge(on: bool) {
    options::put_background_purge(on);
    if on {
        crate::reclaim::start_background_thread();
    }
}

/// Switches the statistics report at exit on or off.
pub fn set_stats_at_exit(on: bool) {
    options::put_stats_at_exit(on);
    if on {
        register_exit_report();
    }
}

/// Sets the fixed part of the dirty budget in bytes (a quarter of the live large bytes
/// is added to it); free space above the budget is purged now.
pub fn set_dirty_budget(bytes: usize) {
    options::put_dirty_budget(bytes);
    purge::tick(os::now_ms());
}

/// Whether the exit report is armed: set by the process set-up (`stats=1`) or by
/// switching it on at run time, so a process that never set the engine up prints
/// nothing (and parses no options at exit).
static EXIT_REPORT_ARMED: AtomicBool = AtomicBool::new(false);

/// Arms the exit report; it prints only if the switch is still on at exit.
pub fn register_exit_report() {
    // Relaxed: read back only at exit, by the thread that runs `exit` (which follows
    // the arming thread's allocation, or the program's own synchronisation).
    EXIT_REPORT_ARMED.store(true, Ordering::Relaxed);
}

/// The exit report, run by the loader's `_dl_fini` at `exit` (after the program's
/// `atexit` handlers and C++ static destructors). Not registered with `atexit` at the
/// process set-up: the set-up runs at the first allocation, which may be the one glibc
/// makes inside `atexit` while it holds its (non-recursive) exit-handler lock, and
/// registering there waited on that lock forever (`setup_under_libc_locks` test), as
/// the profiler's exit dump did (`prof::AT_EXIT`).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = print_stats_at_exit;

extern "C" fn print_stats_at_exit() {
    // Relaxed: see `register_exit_report`.
    if EXIT_REPORT_ARMED.load(Ordering::Relaxed) && options::stats_at_exit() {
        crate::snapshot::print_to_stderr();
    }
}
