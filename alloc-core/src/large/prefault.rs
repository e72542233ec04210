//! Which zero-filled large objects on fresh pages are faulted in before they are
//! returned (`calloc`, Rust's `alloc_zeroed`), and the evidence that decides it. Owns
//! the process's prefault credit, the calling thread's samples and the counters; calls
//! `os` (`prefault`, `pagemap::written_pages`), `options` and `region` (a sample's
//! length at its free).
//!
//! A large object placed on fresh (or purged) pages reads zero without a write, so
//! `calloc` leaves it lazy, as glibc, jemalloc and mimalloc do. But a program that reads
//! a word of it before writing it (a check that it is zero, a hash table's probe) maps
//! the shared zero page there, and its write then replaces that page with a TLB flush
//! that interrupts every other CPU running the process: an inter-processor interrupt,
//! a trap to the hypervisor in a VM. `mstress` spent 31-37% of its time in those
//! flushes (BENCHMARKS.md, "Session 18"). Faulting the object in first avoids them, and
//! a program that writes the object whole anyway pays nothing more for it (one
//! `madvise` faults the pages in a kernel loop, cheaper than a fault per page). A
//! program that uses few pages of its zeroed objects would pay RSS for the rest:
//! session 15 tried prefaulting every fresh zeroed object up to 1 MiB and reverted it,
//! 200 `calloc(1 MiB)` with one byte used each then held 205 MiB (review15 #7).
//!
//! So the program's own objects decide. Objects stay lazy, and are *sampled*, while the
//! process has no credit; one sampled object is remembered per slot of the allocating
//! thread's ring (`SAMPLE_SLOTS`), and when that thread frees it, one scan of its page
//! tables counts the pages the program wrote. Written (at least `DENSE_SHARE` of its
//! pages): the credit grows by `SAMPLE_EVERY` times its length, up to `CREDIT_MAX`.
//! Not: the credit drops to zero. While credit lasts, zeroed objects are prefaulted and
//! each spends its length, except every `SAMPLE_EVERY`-th one the process places, which
//! stays lazy and is sampled, so the evidence stays current. Between two objects found
//! written, prefaulting spends at most `CREDIT_MAX`: that bounds the RSS a change to
//! sparse use can cost before a sample shows it.
//!
//! What the heuristic can get wrong, and the cost: a sample freed by another thread is
//! never scanned (its slot is reused later); a sample's range that another thread
//! reuses and this thread then frees, with the same length, is scanned as if it were
//! the sample (this thread's own placements clear any slot at their start, so only a
//! hand-off can do that). Either way only the credit is off, within its bound. Where
//! the kernel cannot scan (before 6.7, or a sandbox), no credit is ever earned: every
//! zeroed object stays lazy, as before this module.

use crate::options;
use crate::os::{self, PAGE_SIZE};
use crate::region::ARENAS;
use crate::stats::Counter;
use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// One zeroed object in this many that the process places stays lazy and is sampled,
/// credit or not.
const SAMPLE_EVERY: usize = 8;

/// The most credit the process holds: the bytes it may prefault on the strength of the
/// samples seen so far, before the next one is found written.
pub const CREDIT_MAX: usize = 32 << 20;

/// A sample counts as written when at least this share of its pages holds bytes
/// (numerator over `DENSE_SHARE.1`): seven in eight, so that prefaulting the whole
/// object costs at most a seventh more than the program's own writes.
const DENSE_SHARE: (usize, usize) = (7, 8);

/// Samples a thread remembers at once.
const SAMPLE_SLOTS: usize = 4;

/// Zero-filled objects faulted in before they were returned.
pub static PREFAULTED: Counter = Counter::new();
/// Bytes those objects held.
pub static PREFAULTED_BYTES: Counter = Counter::new();
/// Samples scanned at their free and found written.
pub static FOUND_WRITTEN: Counter = Counter::new();
/// Samples scanned at their free and found sparse (the credit went to zero).
pub static FOUND_SPARSE: Counter = Counter::new();

/// The bytes the process may still prefault (see the module doc).
static CREDIT: AtomicUsize = AtomicUsize::new(0);

/// Zeroed objects placed on fresh pages so far, for `SAMPLE_EVERY`: process-wide, so
/// that threads that live for a few objects each do not all sample their first.
static SEEN: AtomicUsize = AtomicUsize::new(0);

/// The credit left now (statistics).
pub fn credit() -> usize {
    CREDIT.load(Ordering::Relaxed)
}

/// A thread's samples: `(start, len)` of objects it left lazy, `len` as the region
/// table keeps it (guard page included); `(0, 0)` for an empty slot. Plain cells, no
/// destructor: usable up to the thread's last free.
struct Samples {
    slots: Cell<[(usize, usize); SAMPLE_SLOTS]>,
    /// The slot the next sample takes (round robin: the oldest gives way).
    next: Cell<usize>,
}

std::thread_local! {
    static SAMPLES: Samples = const {
        Samples {
            slots: Cell::new([(0, 0); SAMPLE_SLOTS]),
            next: Cell::new(0),
        }
    };
}

/// Whether the program asked for prefaulting (`calloc_prefault`).
#[inline]
fn enabled() -> bool {
    options::get().calloc_prefault
}

/// Called for every large object this thread placed, before it is returned: forgets
/// any sample at its start (a stale one, see the module doc), and for a zero-filled
/// object on fresh pages (`zero_fresh`) of `len` bytes (guard page included, `guard` of
/// them) prefaults it or samples it. Every size above the small limit: a sample's scan
/// (three syscalls, a few microseconds) is paid by one zeroed object in `SAMPLE_EVERY`.
///
/// # Safety
/// `[start, start + len - guard)` is the caller's new object, which reads zero when
/// `zero_fresh`, and which nothing else touches yet.
pub unsafe fn placed(start: usize, len: usize, guard: usize, zero_fresh: bool) {
    SAMPLES.with(|s| {
        let mut slots = s.slots.get();
        if let Some(slot) = slots.iter_mut().find(|slot| slot.0 == start) {
            *slot = (0, 0);
            s.slots.set(slots);
        }
    });
    if !zero_fresh || !enabled() {
        return;
    }
    let bytes = len - guard;
    let sample = SEEN
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(SAMPLE_EVERY);
    // SAFETY: forwarded contract.
    if !sample && take_credit(bytes) && unsafe { os::prefault(start, bytes) } {
        PREFAULTED.inc();
        PREFAULTED_BYTES.add(bytes as u64);
        return;
    }
    SAMPLES.with(|s| {
        let mut slots = s.slots.get();
        let next = s.next.get();
        slots[next] = (start, len);
        s.slots.set(slots);
        s.next.set((next + 1) % SAMPLE_SLOTS);
    });
}

/// Spends `bytes` of credit, or says there is not that much.
fn take_credit(bytes: usize) -> bool {
    CREDIT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            c.checked_sub(bytes)
        })
        .is_ok()
}

/// Called by this thread's free of the live large object at `start`, before the object
/// goes: if it is one of the thread's samples, counts the pages the program wrote and
/// moves the credit (see the module doc). `guard` is the guard page's length.
pub fn freeing(start: usize, guard: usize) {
    let Some(len) = SAMPLES.with(|s| {
        let mut slots = s.slots.get();
        let slot = slots
            .iter_mut()
            .find(|slot| slot.0 == start && start != 0)?;
        let len = slot.1;
        *slot = (0, 0);
        s.slots.set(slots);
        Some(len)
    }) else {
        return;
    };
    // The same length as sampled: a range reused for another object is not the sample.
    if ARENAS.object_len(start) != Some(len) {
        return;
    }
    let pages = (len - guard) / PAGE_SIZE;
    let Some(written) = os::pagemap::written_pages(start, len - guard) else {
        return; // the kernel cannot say: no evidence either way
    };
    if written * DENSE_SHARE.1 >= pages * DENSE_SHARE.0 {
        FOUND_WRITTEN.inc();
        let earned = (len - guard).saturating_mul(SAMPLE_EVERY);
        let _ = CREDIT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            Some(c.saturating_add(earned).min(CREDIT_MAX))
        });
    } else {
        FOUND_SPARSE.inc();
        CREDIT.store(0, Ordering::Relaxed);
    }
}
