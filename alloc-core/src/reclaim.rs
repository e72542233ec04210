//! Returning free memory from everywhere it sits, on request or in the background: the
//! region table's free space (`purge`) and the free units of every thread's heap,
//! idle and abandoned ones included (`heap::reclaim`). Owns `purge_now` (behind Rust's
//! `purge()`, C's `rangealloc_purge`, `malloc_trim` and `arena.<i>.purge`) and the
//! background purger thread; calls `heap`, `purge`, `region`, `options` and
//! `large::cache` (`flush_all`).
//!
//! A cache that keeps free memory per thread (regions, pages) must be emptied here too:
//! `purge_now` calls `flush_caches` first, so that what the caches give back lands in
//! the heaps or the table before they are purged. The background pass does not: the
//! medium-region caches (`large::cache`) let go of what they did not use during each
//! purge interval themselves, and emptying every cache every pass would undo them.

use crate::os::PurgeMode;
use crate::{heap, options, purge, region::ARENAS};
use core::sync::atomic::{AtomicBool, Ordering};

/// Gives back what per-thread caches hold: every thread's cache of freed medium
/// regions (idle threads' too, each under its own lock).
fn flush_caches() {
    crate::large::cache::flush_all();
}

/// Purges every free byte now, whatever its age: every heap's free units (the caller's
/// and those of idle, blocked and exited threads) and every free region of the table.
/// Returns the bytes purged.
pub fn purge_now() -> usize {
    flush_caches();
    let (_, mode) = purge::settings();
    let heaps = heap::reclaim::purge_every_heap(0, mode).purged;
    ARENAS.collect_retired();
    heaps + purge::purge_all()
}

/// One pass of the background purger: what has been free for the purge delay.
fn background_pass(delay_ms: u64, mode: PurgeMode) {
    heap::reclaim::purge_all_heaps(delay_ms, mode);
    purge::run_pass(delay_ms, mode, purge::PASS_BUDGET);
}

/// The background purger sleeps at most this long between checks, so a purge delay or
/// switch changed at run time takes effect within a second.
const MAX_BACKGROUND_SLEEP_MS: u64 = 1000;

/// Whether a thread has claimed the start of the background purger.
static BACKGROUND_CLAIMED: AtomicBool = AtomicBool::new(false);

/// True once the background purger runs (reported by stats and tests).
pub static BACKGROUND_STARTED: AtomicBool = AtomicBool::new(false);

/// Set in a fork child whose parent ran the background purger: the thread did not
/// survive the fork, and the child's next purge tick starts it again
/// (`restart_after_fork`). Not at the fork itself: a child that only `exec`s should not
/// pay for a thread.
static RESTART_IN_CHILD: AtomicBool = AtomicBool::new(false);

/// The `fork` child handler's part (single-threaded, the fork locks released): the
/// parent's background purger is gone; arms its lazy restart.
pub fn after_fork_in_child() {
    // Relaxed: the child's only thread reads and writes these until it starts another.
    if BACKGROUND_STARTED.load(Ordering::Relaxed) {
        BACKGROUND_STARTED.store(false, Ordering::Relaxed);
        BACKGROUND_CLAIMED.store(false, Ordering::Relaxed);
        RESTART_IN_CHILD.store(true, Ordering::Relaxed);
    }
}

/// Called by each purge tick (`purge::tick`, at most once per interval and per large
/// free): in a fork child whose parent ran the background purger, starts it again if
/// the option still asks for it. One Relaxed load otherwise.
#[inline]
pub fn restart_after_fork() {
    // Relaxed: the flag only elects the one restarter; `start_background_thread` elects
    // again with its own flag.
    if RESTART_IN_CHILD.load(Ordering::Relaxed) && RESTART_IN_CHILD.swap(false, Ordering::Relaxed) {
        restart_cold();
    }
}

#[cold]
#[inline(never)]
fn restart_cold() {
    if options::background_purge() {
        start_background_thread();
    }
}

/// Starts the optional background purger, once per process: a thread that runs a pass
/// every interval while `options::background_purge()` holds (it can be switched off and
/// on at run time; switched off, the thread only sleeps), so idle processes, and idle
/// threads of busy ones, return memory without making allocator calls.
pub fn start_background_thread() {
    extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
        loop {
            let (delay, mode) = purge::settings();
            let interval = purge::interval_ms(delay).min(MAX_BACKGROUND_SLEEP_MS);
            let pause = libc::timespec {
                tv_sec: (interval / 1000) as libc::time_t,
                tv_nsec: ((interval % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: a valid timespec; an early wake-up (signal) only purges sooner.
            unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
            if options::background_purge() {
                background_pass(delay, mode);
            }
        }
    }
    // Relaxed: the flag only elects the one starter; the thread reads nothing it set.
    if BACKGROUND_CLAIMED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut thread: libc::pthread_t = 0;
    // SAFETY: valid out-pointer, default attributes, a function with the C signature;
    // the thread runs for the life of the process.
    let started =
        unsafe { libc::pthread_create(&mut thread, core::ptr::null(), run, core::ptr::null_mut()) };
    if started == 0 {
        BACKGROUND_STARTED.store(true, Ordering::Relaxed);
        // SAFETY: `thread` was just created and is not joined by anyone.
        unsafe { libc::pthread_detach(thread) };
    }
}
