//! Returning memory to the OS: when and how much. Owns the purge clock, the purge
//! counters and the gauge of live large bytes that sizes the dirty budget; calls
//! `region` (free regions, purged under their own read lock), `options` and `reclaim`
//! (a fork child's first tick restarts the parent's background purger). Heaps purge
//! their own unused units from their slow path (`heap::slow`) and then call `tick`,
//! which runs the table-wide pass at most once per interval: decay is lazy, driven by
//! allocator calls, never done on every free. Explicit purges and the background
//! purger (`reclaim`) also run the heaps' purge from other threads.
//!
//! Reuse before purge: freed space stays dirty (resident, reusable without a fault) up
//! to a budget that follows the program's live large bytes, and ages out with the purge
//! delay; past the budget, dirty space is purged at once down to a low-water mark an
//! eighth under it (`low_water`: rare passes, each a full batch of pieces advised by
//! one system call, `os::purge_many`), and the dirty rest of a hole a fresh big object
//! took the front of (`large::trim_after`, counted here).

use crate::options;
use crate::os::PurgeMode;
use crate::region::ARENAS;
use crate::stats::Counter;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The pass runs at most this often relative to the delay (a quarter of it), so dirty
/// memory lives at most 1.25 x the delay.
const INTERVAL_DIVISOR: u64 = 4;
/// ... and at least every this many ms apart, so a zero delay does not purge on
/// every slow path.
const MIN_INTERVAL_MS: u64 = 10;
/// Bytes one pass may purge: bounds the time a pass spends in `madvise`.
pub const PASS_BUDGET: usize = 256 << 20;

static NEXT_PASS_MS: AtomicU64 = AtomicU64::new(0);
pub static PURGED_BYTES: Counter = Counter::new();
pub static PASSES: Counter = Counter::new();

/// The purge delay in force (a run-time setting may have changed it) and the mode.
pub fn settings() -> (u64, PurgeMode) {
    (options::purge_delay_ms(), options::get().purge_mode)
}

/// How often the table-wide pass runs for a delay (`PURGE_NEVER`: about every 146
/// million years, which the callers' additions to a millisecond clock cannot overflow).
pub fn interval_ms(delay_ms: u64) -> u64 {
    (delay_ms / INTERVAL_DIVISOR).max(MIN_INTERVAL_MS)
}

/// Dirty holes' rests purged right after a fresh object took the hole's front
/// (`large::trim_after`): purges that purged something, and their bytes (also counted in
/// `PURGED_BYTES`).
pub static TRIMS: Counter = Counter::new();
pub static TRIMMED_BYTES: Counter = Counter::new();

/// Records one `large::trim_after`'s bytes.
pub fn record_trim(bytes: usize) {
    if bytes > 0 {
        TRIMS.inc();
        TRIMMED_BYTES.add(bytes as u64);
        PURGED_BYTES.add(bytes as u64);
    }
}

pub fn record_heap_purge(bytes: usize) {
    if bytes > 0 {
        PURGED_BYTES.add(bytes as u64);
    }
}

/// Dirty free space kept for reuse whatever the program's size, by default: one 64 MiB
/// buffer's worth (the region workload's biggest), the fixed cap this budget replaced.
/// The option `dirty_budget_mb` and the run-time setters change it
/// (`options::dirty_budget`).
pub const DIRTY_FLOOR: usize = options::DEFAULT_DIRTY_BUDGET;
/// ... plus the live large bytes shifted right by this: a quarter of them. A program
/// that replaces big buffers (big-buffers: 20 live buffers, one replaced at a time)
/// finds a dirty region that fits among the last few it freed, while its peak RSS
/// stays within 1.25x its live bytes plus the floor (jemalloc keeps up to 10 s of
/// freed pages, tcmalloc keeps them all).
const DIRTY_LIVE_SHIFT: u32 = 2;

/// Bytes in live large objects (page-rounded regions), kept by `large`. Relaxed: a
/// gauge that sizes the budget, with no ordering duties. Wraps transiently when a free
/// is counted before the allocation it races with; read through `live_large_bytes`.
static LIVE_LARGE: AtomicUsize = AtomicUsize::new(0);

/// Records that live large objects grew by `bytes` (allocation, growth in place).
#[inline]
pub fn large_added(bytes: usize) {
    LIVE_LARGE.fetch_add(bytes, Ordering::Relaxed);
}

/// Records that live large objects shrank by `bytes` (free, shrink in place).
#[inline]
pub fn large_removed(bytes: usize) {
    LIVE_LARGE.fetch_sub(bytes, Ordering::Relaxed);
}

/// Bytes in live large objects.
pub fn live_large_bytes() -> usize {
    let live = LIVE_LARGE.load(Ordering::Relaxed);
    // A transient wrap (see `LIVE_LARGE`) reads as zero, never as 16 EiB.
    if live > isize::MAX as usize {
        0
    } else {
        live
    }
}

/// The dirty space the table may hold before it is purged at once (to `low_water`), whatever
/// its age: reuse of dirty space is what makes freeing and reallocating big buffers
/// cheap, but a burst of frees must not pin memory out of proportion to the program.
pub fn dirty_budget() -> usize {
    options::dirty_budget().saturating_add(live_large_bytes() >> DIRTY_LIVE_SHIFT)
}

/// What a dirty budget's purge brings dirty space down to: the budget less an eighth
/// (hysteresis). Purging only the excess purged one freed object's worth on nearly every
/// free once the budget was reached: the `medium` workload made a pass per free, each a
/// `madvise` of one or two small pieces, each a TLB shootdown (BENCHMARKS.md,
/// "medpurge11"). Down to the mark, a pass takes full batches (`os::purge_many`), and
/// the next one waits until an eighth of the budget has been freed again.
pub fn low_water(budget: usize) -> usize {
    budget - (budget >> LOW_WATER_SHIFT)
}
const LOW_WATER_SHIFT: u32 = 3;

/// Runs the table-wide pass if its time has come (one thread wins the slot), or at once
/// down to `low_water` when dirty space exceeds `dirty_budget`.
pub fn tick(now_ms: u64) {
    // The one call upward from here: the first tick of a fork child restarts the
    // parent's background purger (`reclaim` owns it), lazily, on a path every front end
    // reaches.
    crate::reclaim::restart_after_fork();
    // Retired regions count as dirty at once: they are, and the pass that purges the
    // excess folds them into free space first (every update drains its arena's stack).
    let mut dirty = ARENAS.freed_bytes();
    let budget = dirty_budget();
    if dirty > budget {
        let (_, mode) = settings();
        let low = low_water(budget);
        // Pass after pass (each bounded to `ARENAS.purge`'s batch of regions, so each
        // holds few read locks), until dirty space is down to the low-water mark or
        // nothing more is purgeable. Bounded by the excess seen on entry (review11):
        // other threads' frees meanwhile are theirs to purge, not this call's.
        let mut left = dirty - low;
        while left > 0 && dirty > low {
            let purged = try_pass(0, mode, left.min(dirty - low));
            if purged == 0 {
                break;
            }
            left = left.saturating_sub(purged);
            dirty = ARENAS.freed_bytes();
        }
        return;
    }
    let next = NEXT_PASS_MS.load(Ordering::Relaxed);
    if now_ms < next {
        return;
    }
    let (delay, mode) = settings();
    // Relaxed: the slot only elects one thread; the pass synchronises through the table.
    if NEXT_PASS_MS
        .compare_exchange(
            next,
            now_ms.saturating_add(interval_ms(delay)),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        try_pass(delay, mode, PASS_BUDGET);
    }
}

/// `run_pass` over the arenas whose writer mutex is free now (`Arenas::try_purge`): the
/// passes `tick` runs on an allocator call's way skip busy arenas rather than wait.
fn try_pass(delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
    PASSES.inc();
    let bytes = ARENAS.try_purge(delay_ms, mode, budget);
    PURGED_BYTES.add(bytes as u64);
    bytes
}

/// Purges free regions dirty for at least `delay_ms`; returns bytes purged.
pub fn run_pass(delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
    PASSES.inc();
    let bytes = ARENAS.purge(delay_ms, mode, budget);
    PURGED_BYTES.add(bytes as u64);
    bytes
}

/// Purges every free region now, whatever its age (`reclaim::purge_now` adds the heaps'
/// free units).
pub fn purge_all() -> usize {
    let (_, mode) = settings();
    let mut total = 0;
    loop {
        let bytes = run_pass(0, mode, usize::MAX);
        total += bytes;
        if bytes == 0 {
            return total;
        }
    }
}
