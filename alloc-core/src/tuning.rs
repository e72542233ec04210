//! Run-time changes of the options that can change safely while the program runs: the
//! purge delay, the background purger, the report at exit and the dirty budget (the
//! others shape memory already handed out, or the fast path, and stay as parsed).
//! Owns the one-time registration of the exit report; stores values through `options`
//! and calls `purge` and `snapshot` to apply them.

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

static EXIT_REPORT_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers the exit report with `atexit`, once per process; it prints only if the
/// switch is still on at exit.
pub fn register_exit_report() {
    // Relaxed: the flag only elects the one registering thread.
    if EXIT_REPORT_REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: registering a plain `extern "C"` function with no preconditions.
    unsafe { libc::atexit(print_stats_at_exit) };
}

extern "C" fn print_stats_at_exit() {
    if options::stats_at_exit() {
        crate::snapshot::print_to_stderr();
    }
}
