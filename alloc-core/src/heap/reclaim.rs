//! Returning the free units of every heap, from any thread: what lets `purge()`, the
//! background purger and `malloc_trim` reach the memory of threads that are blocked or
//! idle. Owns each heap's segments lock and the foreign pass over all heaps; calls
//! `segment` (to purge units), `lifecycle` (the heap list) and `os`.
//!
//! **The segments lock.** A heap's segment list (`Heap::segments`, `Segment::next/prev`)
//! and every segment's unit bookkeeping (`free_units`, `dirty_units`, `dirty_since`)
//! change only under the heap's `SegmentsLock`. The owner takes it on its slow paths
//! that touch them (a fresh page, retiring a page, releasing a segment, its own purge,
//! trim at exit, repair after fork); a foreign purger takes it with `try_lock_purger`
//! and skips the heap when it is held. The fast paths (`alloc_small`, `free_small`)
//! never touch these fields and never take the lock: they cost nothing more.
//!
//! A purger holds a heap's lock for one segment at a time (at most 4 MiB of `madvise`),
//! so an owner waits for at most that.
//!
//! Invariants:
//! 1. Lock held ⇒ nobody else reads or writes the fields above (owner and purger alike
//!    access them only while holding it; the Acquire of a lock pairs with the Release of
//!    the previous unlock, so each holder sees the previous holder's writes).
//! 2. A unit in `free_units` holds no live block and no live page: the owner claims
//!    units (`alloc_page`) only under the lock, so a purger that holds the lock may
//!    `madvise` a free dirty unit without zeroing anything in use. Remote freers never
//!    touch free units (a free into a retired page is a double free).
//! 3. A segment reachable from `Heap::segments` under the lock is live: the owner
//!    unlinks a segment under the lock before it gives it back to the region table.
//! 4. Heaps are never freed (`lifecycle`), so a purger may visit any heap ever created,
//!    including abandoned ones and, in a fork child, orphans.
//! 5. `fork`: a foreign pass holds `FOREIGN_PASS`, which `fork_prepare` takes first, so
//!    no purger holds a heap's lock at `fork`. An owner may (another thread of the parent
//!    in its slow path): its heap is an orphan in the child, the lock word says `OWNER`,
//!    and the adopter inherits it (`lock_owner_inheriting`) before it repairs the heap.
//!    A child purger sees `OWNER` and skips the orphan, whose fields may be half written.
//!
//! What a foreign purger does **not** reclaim, because the owner's fast paths use it
//! without a lock: the pages still in a class queue (at most the one empty page each
//! class keeps, 64 KiB, or 512 KiB for classes above 4 KiB), and the blocks other
//! threads freed into a page (`thread_free`), which go back to the owner's free lists,
//! and then to the segment, at the owner's next slow path or exit.

use super::segment::Segment;
pub use super::segments_lock::SegmentsLock;
use super::Heap;
use crate::os::PurgeMode;
use crate::sync::SpinLock;
use core::ptr;

/// Held by a foreign pass for its whole walk, and by `fork_prepare` (first of the heap
/// locks), so that no purger holds a heap's segments lock when the process forks.
static FOREIGN_PASS: SpinLock<()> = SpinLock::new(());

/// Locks out foreign passes across `fork`.
pub(super) fn fork_prepare() {
    FOREIGN_PASS.raw_lock();
}

/// # Safety
/// After `fork_prepare` on this thread.
pub(super) unsafe fn fork_release() {
    // SAFETY: caller contract.
    unsafe { FOREIGN_PASS.raw_unlock() };
}

/// What a foreign pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForeignPass {
    /// Bytes of free units returned with `madvise`.
    pub purged: usize,
    /// Heaps visited.
    pub heaps: usize,
    /// Heaps skipped because their owner held the segments lock.
    pub busy: usize,
}

/// Purges the free units dirty for at least `delay_ms` of every heap (the caller's own
/// included), from any thread. A heap whose owner is in a slow path that holds its
/// segments lock is skipped (its owner purges it itself on that path). Bytes purged.
pub fn purge_all_heaps(delay_ms: u64, mode: PurgeMode) -> ForeignPass {
    let _pass = FOREIGN_PASS.lock();
    let now = crate::os::now_ms();
    let mut pass = ForeignPass::default();
    let mut heap = super::lifecycle::first_heap();
    while !heap.is_null() {
        pass.heaps += 1;
        // SAFETY: heaps are never freed; the lock word is an atomic, reached without a
        // reference to the heap (its owner may hold `&mut Heap`).
        let lock = unsafe { &*ptr::addr_of!((*heap).segments_lock) };
        // One segment per lock section, so an owner that needs the lock waits for at
        // most one segment's `madvise` (at most 4 MiB), not for the whole heap's. At most
        // as many sections as the heap had segments at the first: an owner that keeps
        // dirtying units cannot hold the pass on its heap (the rest waits for the next).
        let mut sections = 0;
        let mut limit = 1;
        while sections < limit {
            if !lock.try_lock_purger() {
                pass.busy += 1;
                break;
            }
            // SAFETY: we hold the heap's segments lock (invariant 1).
            let (purged, segments) = unsafe { purge_one_segment(heap, now, delay_ms, mode) };
            lock.unlock();
            if sections == 0 {
                limit = segments;
            }
            sections += 1;
            match purged {
                Some(bytes) => pass.purged += bytes,
                None => break,
            }
        }
        // SAFETY: `all_next` is written once, before the heap is published in the list.
        heap = unsafe { super::lifecycle::next_heap(heap) };
    }
    crate::purge::record_heap_purge(pass.purged);
    pass
}

/// Purges the first segment of `heap` whose free units have been dirty for `delay_ms`:
/// the bytes purged (`None` when no segment has any), and the heap's segment count.
///
/// # Safety
/// The caller holds `heap`'s segments lock.
unsafe fn purge_one_segment(
    heap: *mut Heap,
    now_ms: u64,
    delay_ms: u64,
    mode: PurgeMode,
) -> (Option<usize>, usize) {
    let mut purged = None;
    let mut segments = 0;
    // SAFETY: caller contract, as in `purge_segments`.
    unsafe {
        let mut seg = ptr::addr_of!((*heap).segments).read();
        while !seg.is_null() {
            segments += 1;
            if purged.is_none() && Segment::purgeable(seg, now_ms, delay_ms) {
                purged = Some(Segment::purge(seg, now_ms, delay_ms, mode));
            }
            seg = ptr::addr_of!((*seg).next).read();
        }
    }
    (purged, segments)
}

/// Purges the dirty free units of every segment of `heap`; bytes purged. Used by the
/// owner's periodic purge (the owner holds its own lock as long as it likes: purgers
/// only try it).
///
/// # Safety
/// The caller holds `heap`'s segments lock.
pub(super) unsafe fn purge_segments(
    heap: *mut Heap,
    now_ms: u64,
    delay_ms: u64,
    mode: PurgeMode,
) -> usize {
    let mut bytes = 0;
    // SAFETY: caller contract: the list and each segment's unit fields are ours to read
    // and write while we hold the lock, and every segment on the list is live.
    unsafe {
        let mut seg = ptr::addr_of!((*heap).segments).read();
        while !seg.is_null() {
            bytes += Segment::purge(seg, now_ms, delay_ms, mode);
            seg = ptr::addr_of!((*seg).next).read();
        }
    }
    bytes
}
