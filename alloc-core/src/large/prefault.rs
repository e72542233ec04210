//! Which zero-filled large objects on fresh pages are faulted in before they are
//! returned (`calloc`, Rust's `alloc_zeroed`), and the evidence that decides it. Owns
//! the process's live prefaulted bytes, its verdict and table of samples, and the
//! counters; calls `os` (`prefault`, `pagemap::written_pages`, `checkpoint`),
//! `options` and `region` (the prefaulted mark, a sample's length at its free).
//!
//! A large object placed on fresh (or purged) pages reads zero without a write, so
//! `calloc` leaves it lazy, as glibc, jemalloc and mimalloc do. But a program that reads
//! a word of it before writing it (a check that it is zero, a hash table's probe) maps
//! the shared zero page there, and its write then replaces that page with a TLB flush
//! that interrupts every other CPU running the process: an inter-processor interrupt,
//! a trap to the hypervisor in a VM. `mstress` spent 31-37% of its time in those
//! flushes (BENCHMARKS.md, "Session 18"). Faulting the object in first avoids them, and
//! a program that writes the object whole anyway pays nothing more for it (`madvise`
//! faults the pages in a kernel loop, cheaper than a fault per page). A program that
//! uses few pages of its zeroed objects would pay RSS for the rest: session 15 tried
//! prefaulting every fresh zeroed object up to 1 MiB and reverted it, 200 `calloc(1
//! MiB)` with one byte used each then held 205 MiB (review15 #7).
//!
//! So two rules. **Evidence:** one zeroed object in `SAMPLE_EVERY` (drawn by a mixed
//! counter, so no pattern of the program's aliases with it) stays lazy and is
//! remembered in a process-wide table of the last `SAMPLE_SLOTS` samples; when one is
//! freed, by any thread, one scan of its page tables counts the pages the program
//! wrote, and the verdict becomes "written" (at least `DENSE_SHARE` of its pages) or
//! "sparse". Objects are prefaulted only while the verdict is "written". **Bound:**
//! the bytes of live prefaulted objects stay at most `LIVE_MAX`: each prefaulted object
//! is marked in its region (`Region::mark_prefaulted`) and gives its bytes back at its
//! free; a `realloc` moves the mark and the count to the object that comes out, where
//! the populated pages live on (counted whole, past the bound if it grew: that only
//! stops prefaulting sooner). So whatever the program does, prefaulting holds at most
//! `LIVE_MAX` of memory the program did not write (review18 H1: a budget refilled by
//! the evidence alone let a program mixing dense, freed objects with sparse, kept
//! ones lose 450 MiB).
//!
//! Only base space (objects below `HUGE_OBJECT_MIN`): in huge-page space a read maps
//! the huge zero page and the first write replaces it with one flush per 2 MiB, not per
//! 4 KiB, and some kernels before 6.16 scan the huge zero page as written (review18
//! M1). Not in a process restored from a checkpoint, where each populated page would be
//! a round trip to a lazy-restore monitor inside `calloc` (`os::checkpoint`).
//!
//! What the heuristic can miss, at no cost but the verdict's accuracy: a sample pushed
//! out of the table by newer ones, or resized or moved by `realloc` (which forgets it),
//! is never scanned. Every way an object goes (its free, a `realloc`, the retire of one
//! whose guard page failed) forgets its sample, so a sample in the table is always its
//! own live object (placements forget any sample at their start too). Where the
//! kernel cannot scan (before 6.7, or a sandbox), the verdict never becomes "written":
//! every zeroed object stays lazy, as before this module.

use super::HUGE_OBJECT_MIN;
use crate::options;
use crate::os::{self, PAGE_SIZE};
use crate::region::{Region, ARENAS};
use crate::stats::Counter;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One zeroed object in this many stays lazy and is sampled, whatever the verdict.
const SAMPLE_EVERY: usize = 8;

/// The most bytes live prefaulted objects may hold: the RSS prefaulting can cost a
/// program that leaves its zeroed objects unwritten (see the module doc).
pub const LIVE_MAX: usize = 32 << 20;

/// A sample counts as written when at least this share of its pages holds bytes
/// (numerator over `DENSE_SHARE.1`): seven in eight.
const DENSE_SHARE: (usize, usize) = (7, 8);

/// Samples the process remembers at once: one cache line of packed words.
const SAMPLE_SLOTS: usize = 8;

/// Zero-filled objects faulted in before they were returned.
pub static PREFAULTED: Counter = Counter::new();
/// Bytes those objects held.
pub static PREFAULTED_BYTES: Counter = Counter::new();
/// Zero-filled objects left lazy and remembered as samples.
pub static SAMPLED: Counter = Counter::new();
/// Samples scanned at their free and found written.
pub static FOUND_WRITTEN: Counter = Counter::new();
/// Samples scanned at their free and found sparse.
pub static FOUND_SPARSE: Counter = Counter::new();

/// Bytes of live prefaulted objects (marked in their regions).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The verdict of the last sample scanned: true for "written".
static WRITTEN: AtomicBool = AtomicBool::new(false);

/// Zeroed objects placed so far, mixed into the sample draw.
static SEEN: AtomicUsize = AtomicUsize::new(0);

/// Bytes of live prefaulted objects now (statistics, tests).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Whether the last sample scanned was found written (statistics, tests).
pub fn verdict_written() -> bool {
    WRITTEN.load(Ordering::Relaxed)
}

/// The samples: each slot holds a sample's start and length (as the region table keeps
/// it, guard page included) packed into one word (`pack`), or 0. Read by every large
/// free (one cache line), written when a sample is taken or forgotten.
static SAMPLES: Line = Line([const { AtomicUsize::new(0) }; SAMPLE_SLOTS]);

/// The table's one cache line.
#[repr(align(64))]
struct Line([AtomicUsize; SAMPLE_SLOTS]);

/// The slot the next sample takes (round robin: the oldest gives way).
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// Bits of a packed sample that hold its start's page number: 47-bit addresses.
const START_BITS: u32 = 47 - PAGE_SIZE.trailing_zeros();

/// A sample as one word: its start's page number low, its length in pages high. `None`
/// for an address beyond 47 bits or page 0 (never ours).
fn pack(start: usize, len: usize) -> Option<usize> {
    let (page, pages) = (start / PAGE_SIZE, len / PAGE_SIZE);
    (page < 1 << START_BITS && pages < 1 << (usize::BITS - START_BITS) && page != 0)
        .then_some(page | pages << START_BITS)
}

/// A packed sample's start and length.
fn unpack(word: usize) -> (usize, usize) {
    (
        (word & ((1 << START_BITS) - 1)) * PAGE_SIZE,
        (word >> START_BITS) * PAGE_SIZE,
    )
}

/// Takes the sample at `start` out of the table: its length, if it was there.
fn take_sample(start: usize) -> Option<usize> {
    SAMPLES.0.iter().find_map(|slot| {
        let word = slot.load(Ordering::Relaxed);
        if word == 0 || unpack(word).0 != start {
            return None;
        }
        // One taker: a sample leaves the table once, whoever else looks.
        slot.compare_exchange(word, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| unpack(word).1)
    })
}

/// Whether the `n`-th zeroed object is a sample: the first (the verdict starts from
/// evidence as early as it can), then one in `SAMPLE_EVERY` by SplitMix64's finaliser,
/// so the draw has no period a program's alternation of objects could fall in step
/// with.
fn drawn(n: usize) -> bool {
    if n == 0 {
        return true;
    }
    let mut z = (n as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as usize).is_multiple_of(SAMPLE_EVERY)
}

/// Whether the program asked for prefaulting (`calloc_prefault`).
#[inline]
fn enabled() -> bool {
    options::get().calloc_prefault
}

/// Called for every large object placed, before it is returned: forgets any sample at
/// its start (a stale one, see the module doc), and for a zero-filled object on fresh
/// pages (`zero_fresh`) in base space, of `len` bytes (guard page included, `guard` of
/// them), prefaults it or samples it. Every size above the small limit: a sample's
/// scan (three syscalls, a few microseconds) is paid by one zeroed object in
/// `SAMPLE_EVERY`.
///
/// # Safety
/// `[start, start + len - guard)` is the caller's new object, which reads zero when
/// `zero_fresh`, and which nothing else touches yet.
pub unsafe fn placed(start: usize, len: usize, guard: usize, zero_fresh: bool) {
    take_sample(start);
    let bytes = len - guard;
    if !zero_fresh || bytes >= HUGE_OBJECT_MIN || !enabled() {
        return;
    }
    if drawn(SEEN.fetch_add(1, Ordering::Relaxed)) {
        if let Some(word) = pack(start, len) {
            SAMPLED.inc();
            let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SAMPLE_SLOTS;
            // Relaxed: the object reaches its freer through the program, which orders
            // this store before that free's load.
            SAMPLES.0[slot].store(word, Ordering::Relaxed);
        }
        return;
    }
    if !WRITTEN.load(Ordering::Relaxed) || !os::checkpoint::not_seen_restored() || !reserve(bytes) {
        return;
    }
    // SAFETY: forwarded contract. Counted and marked even where a piece failed: the
    // pieces before it stay populated.
    let populated = unsafe { os::prefault(start, bytes) };
    if ARENAS.mark_prefaulted(start).is_none() {
        LIVE.fetch_sub(bytes, Ordering::Relaxed);
    } else if populated {
        PREFAULTED.inc();
        PREFAULTED_BYTES.add(bytes as u64);
    }
}

/// Counts `bytes` into the live prefaulted bytes, or says they would pass `LIVE_MAX`.
fn reserve(bytes: usize) -> bool {
    LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
        live.checked_add(bytes).filter(|&l| l <= LIVE_MAX)
    })
    .is_ok()
}

/// Called by every free of a large object at `start`, before its region is looked up
/// for the retire: if it is a sample, counts the pages the program wrote and sets the
/// verdict (see the module doc). `guard` is the guard page's length.
pub fn freeing(start: usize, guard: usize) {
    let Some(len) = take_sample(start) else {
        return;
    };
    // Still the live object sampled, as the table's invariant says (module doc): the
    // scan runs before the free's own checks, so a table that broke it must not send
    // it into memory that is not the sample.
    if ARENAS.object_len(start) != Some(len) {
        return;
    }
    let pages = (len - guard) / PAGE_SIZE;
    let Some(written) = os::pagemap::written_pages(start, len - guard) else {
        return; // the kernel cannot say: no evidence either way
    };
    let dense = written * DENSE_SHARE.1 >= pages * DENSE_SHARE.0;
    if dense {
        FOUND_WRITTEN.inc();
    } else {
        FOUND_SPARSE.inc();
    }
    WRITTEN.store(dense, Ordering::Relaxed);
}

/// Called with the region of a large object being freed (under its read lock, once,
/// before it is retired or cached): gives back its bytes if it was prefaulted.
pub fn released(region: &Region, guard: usize) {
    if region.take_prefaulted() {
        LIVE.fetch_sub(region.len() - guard, Ordering::Relaxed);
    }
}

/// Called before a live large object at `start` is resized or moved by `realloc`, or
/// retired unreturned: forgets it as a sample (its pages say nothing of a zeroed
/// object's use once resized or moved), and takes its prefaulted mark, giving its bytes
/// back. True when it had the mark: `realloc` then counts the object that comes out
/// (`resized`), where the populated pages live on.
pub fn resizing(start: usize, guard: usize) -> bool {
    take_sample(start);
    if LIVE.load(Ordering::Relaxed) == 0 {
        return false; // nothing prefaulted is live: no lookup
    }
    match ARENAS.take_prefaulted(start) {
        Some(len) => {
            LIVE.fetch_sub(len - guard, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Counts the live large object at `start`, which holds a resized prefaulted object's
/// pages, as prefaulted: marked, its whole length counted, past `LIVE_MAX` if need be
/// (its grown part may be lazy: counting it only stops prefaulting sooner).
pub fn resized(start: usize, guard: usize) {
    // Marked, then counted: only this `realloc`'s caller can take the mark meanwhile.
    if let Some(len) = ARENAS.mark_prefaulted(start) {
        LIVE.fetch_add(len - guard, Ordering::Relaxed);
    }
}
