//! Returning the free units of every heap, from any thread: what lets `purge()`, the
//! background purger and `malloc_trim` reach the memory of threads that are blocked or
//! idle. Owns the segments lock's protocol (the lock word is `segments_lock`'s) and the
//! foreign pass over all heaps; calls
//! `segment` (to purge units and retire drained pages), `page` (the foreign drain),
//! `lifecycle` (the heap list), `purge` (the purged bytes' count) and `os`.
//!
//! **The segments lock.** A heap's segment list (`Heap::segments`, `Segment::next/prev`)
//! and every segment's unit bookkeeping (`free_units`, `dirty_units`, `dirty_since`)
//! change only under the heap's `SegmentsLock`. The owner takes it on its slow paths
//! that touch them (a fresh page, retiring a page, releasing a segment, its own purge,
//! trim at exit, repair after fork); a foreign purger takes it with `try_lock_purger`
//! and skips the heap when it is held (an explicit purge, `purge_every_heap`, retries
//! it for a bounded time). The fast paths (`alloc_small`, `free_small`) never touch
//! these fields and never take the lock: they cost nothing more.
//!
//! A purger holds a heap's lock for one segment (at most 4 MiB of `madvise`) or one
//! drained page at a time, so an owner waits for at most that.
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
//!    no purger holds a heap's lock, or a page off its pending stack, at `fork`. An
//!    owner may hold its lock (another thread of the parent in its slow path): its heap
//!    is an orphan in the child, the lock word says `OWNER`, and the adopter inherits it
//!    (`lock_owner_inheriting`) before it repairs the heap. A child purger sees `OWNER`
//!    and skips the orphan, whose fields may be half written. Its pending stack, an
//!    atomic, is popped before the lock is tried (and pushed back when it is held): the
//!    adopter's rebuild keeps the popped pages' links (`repair::rebuild_page`).
//! 6. Foreign drain: a page on the pending stack that is still parked (`Pending`) and
//!    whose remote list holds every block it carved belongs to nobody: the owner parked
//!    it (off its queues, Release) and reaches it again only by popping the stack or by
//!    a local free of a live block, and there is none. A purger that popped the stack
//!    retires such a page under the lock (`Segment::free_page`), as the owner's
//!    `drain_pending` would; it gives every other page's blocks back untouched and
//!    pushes the page back (`page`'s module doc; `drain_loom.rs` models it).
//!
//! What a foreign purger does **not** reclaim, because the owner's fast paths use it
//! without a lock: the pages still in a class queue (at most the one empty page each
//! class keeps, 64 KiB, or 512 KiB for classes above 4 KiB, and pages with blocks freed
//! both by their owner and by other threads), whose remote blocks (`thread_free`) go
//! back to the owner's free lists, and then to the segment, at the owner's next slow
//! path or exit.

use super::page::{Page, PendingPages};
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
    /// Heaps left unfinished because their owner held the segments lock (after the
    /// retries, for a pass that waits: `purge_every_heap`).
    pub busy: usize,
    /// Walks over the heaps after the first, retrying busy ones.
    pub retries: usize,
    /// Pages retired because only other threads had freed into them and their owner had
    /// not taken them back (`Page::drain_foreign`).
    pub drained_pages: usize,
}

/// How long an explicit purge waits, in all, for owners that hold their heap's segments
/// lock. An owner holds it for a slow-path section: claiming or retiring a page, or its
/// own purge, which `madvise`s its dirty units (under a millisecond per 4 MiB segment
/// on this VM, so tens of milliseconds for the largest heaps). Past this, a busy heap is
/// left to its owner, who purges it on that very path; only a heap whose owner holds the
/// lock for good (a fork child's orphan of a thread stopped in a slow path) costs every
/// explicit purge the whole wait.
const BUSY_WAIT_MS: u64 = 50;

/// The pause between two walks over the busy heaps: long enough to let an owner on this
/// core run (2 cores shared by many threads here), short against an owner's section.
const BUSY_PAUSE_US: u64 = 200;

/// Purges the free units dirty for at least `delay_ms` of every heap (the caller's own
/// included), from any thread, and retires the pages that only other threads freed into
/// (`Page::drain_foreign`). A heap whose owner is in a slow path that holds its segments
/// lock is skipped (its owner purges it itself on that path): the background purger's
/// pass, which comes back at its next interval.
pub fn purge_all_heaps(delay_ms: u64, mode: PurgeMode) -> ForeignPass {
    foreign_pass(delay_ms, mode, 0)
}

/// `purge_all_heaps` for an explicit purge (`purge()`, `malloc_trim`, ...): heaps whose
/// owner held the segments lock are retried, walk after walk, for up to `BUSY_WAIT_MS`
/// in all. The owners' fast paths never take the lock, so the retries cost them
/// nothing; an owner that needs its lock waits for one section of ours, as always.
pub fn purge_every_heap(delay_ms: u64, mode: PurgeMode) -> ForeignPass {
    foreign_pass(delay_ms, mode, BUSY_WAIT_MS)
}

fn foreign_pass(delay_ms: u64, mode: PurgeMode, wait_ms: u64) -> ForeignPass {
    let _pass = FOREIGN_PASS.lock();
    let now = crate::os::now_ms();
    let deadline = now.saturating_add(wait_ms);
    let mut pass = ForeignPass::default();
    loop {
        let mut busy = 0;
        let mut heap = super::lifecycle::first_heap();
        while !heap.is_null() {
            if pass.retries == 0 {
                pass.heaps += 1;
            }
            // SAFETY: heaps are never freed (invariant 4).
            if !unsafe { purge_heap(heap, now, delay_ms, mode, &mut pass) } {
                busy += 1;
                #[cfg(test)]
                BUSY_HEAP.store(heap as usize, core::sync::atomic::Ordering::Release);
            }
            // SAFETY: `all_next` is written once, before the heap is published in the list.
            heap = unsafe { super::lifecycle::next_heap(heap) };
        }
        pass.busy = busy;
        if busy == 0 || crate::os::now_ms() >= deadline {
            break;
        }
        pass.retries += 1;
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: (BUSY_PAUSE_US * 1000) as libc::c_long,
        };
        // SAFETY: a valid timespec; an early wake-up only retries sooner.
        unsafe { libc::nanosleep(&pause, ptr::null_mut()) };
    }
    crate::purge::record_heap_purge(pass.purged);
    pass
}

/// The last heap a pass found busy, for tests that wait for a pass to find an owner
/// holding its lock.
#[cfg(test)]
static BUSY_HEAP: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// One heap's share of a foreign pass: its pages that only remote frees emptied, then
/// its dirty free units. False if its owner held the segments lock when we needed it.
///
/// # Safety
/// `heap` is a heap of the heap list; the caller holds `FOREIGN_PASS`.
unsafe fn purge_heap(
    heap: *mut Heap,
    now: u64,
    delay_ms: u64,
    mode: PurgeMode,
    pass: &mut ForeignPass,
) -> bool {
    // SAFETY: heaps are never freed; the lock word is an atomic, reached without a
    // reference to the heap (its owner may hold `&mut Heap`).
    let lock = unsafe { &*ptr::addr_of!((*heap).segments_lock) };
    // SAFETY: caller contract.
    if !unsafe { drain_remote_emptied(heap, lock, now, pass) } {
        return false;
    }
    // One segment per lock section, so an owner that needs the lock waits for at most
    // one segment's `madvise` (at most 4 MiB), not for the whole heap's. At most as many
    // sections as the heap had segments at the first: an owner that keeps dirtying units
    // cannot hold the pass on its heap (the rest waits for the next).
    let mut sections = 0;
    let mut limit = 1;
    while sections < limit {
        if !lock.try_lock_purger() {
            return false;
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
    true
}

/// Pops `heap`'s pending stack and retires each page whose blocks other threads have all
/// freed while it stayed parked (`Page::drain_foreign`, invariant 6), one lock section
/// per page; the other pages go back on the stack for the owner. False (the rest pushed
/// back) if the owner held the segments lock.
///
/// # Safety
/// As `purge_heap`.
unsafe fn drain_remote_emptied(
    heap: *mut Heap,
    lock: &SegmentsLock,
    now: u64,
    pass: &mut ForeignPass,
) -> bool {
    // SAFETY: `pending` is an atomic, reached without a reference to the heap.
    let stack = unsafe { &*ptr::addr_of!((*heap).pending) };
    if stack.is_empty() {
        return true;
    }
    let mut page = stack.take_all();
    // SAFETY: the pages popped are live and `Pending`, and ours to link until pushed back
    // (their hand-off stays under way: the owner cannot pop them meanwhile).
    unsafe {
        while !page.is_null() {
            let next = PendingPages::next(page);
            if !lock.try_lock_purger() {
                while !page.is_null() {
                    let next = PendingPages::next(page);
                    stack.push(page);
                    page = next;
                }
                return false;
            }
            if Page::drain_foreign(page) {
                // Retired under the lock: its units go back to the segment, dirty (the
                // pass purges them once they are old enough).
                Segment::free_page(Segment::of(page as usize), page, now);
                pass.drained_pages += 1;
            } else {
                stack.push(page);
            }
            lock.unlock();
            page = next;
        }
    }
    true
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

#[cfg(test)]
mod tests {
    use super::super::{alloc_small, class_of, free_small, Heap};
    use super::BUSY_HEAP;
    use crate::os::PurgeMode;
    use crate::thread;
    use core::ptr;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    /// A class no other unit test allocates from: 51 blocks per 64 KiB page.
    const SIZE: usize = 1280;
    /// Blocks the owner allocates: four pages' worth, so freeing all but the last
    /// retires three pages into dirty free units of a segment that stays.
    const BLOCKS: usize = 4 * 51;
    /// The test's own bound on the wait (the pass stops waiting once the heap is done;
    /// a loaded machine may keep the owner off the CPU far longer than `BUSY_WAIT_MS`).
    const TEST_WAIT_MS: u64 = 60_000;

    /// Dirty free units of `heap`'s segments, read under its lock as a purger would.
    fn dirty_units(heap: *mut Heap) -> u32 {
        // SAFETY: heaps live forever; the lock word is an atomic.
        let lock = unsafe { &*ptr::addr_of!((*heap).segments_lock) };
        while !lock.try_lock_purger() {
            std::thread::yield_now();
        }
        let mut dirty = 0;
        // SAFETY: we hold the heap's segments lock (invariant 1).
        unsafe {
            let mut seg = ptr::addr_of!((*heap).segments).read();
            while !seg.is_null() {
                dirty += ptr::addr_of!((*seg).dirty_units).read().count_ones();
                seg = ptr::addr_of!((*seg).next).read();
            }
        }
        lock.unlock();
        dirty
    }

    /// Item 1 of the follow-up: an explicit purge that finds an owner holding
    /// its segments lock (in a slow path) comes back to the heap once the owner lets go,
    /// instead of leaving its dirty units for later. With the one-try pass
    /// (`purge_all_heaps`) the heap kept its dirty units.
    #[test]
    fn an_explicit_purge_retries_a_heap_whose_owner_held_its_lock() {
        let class = class_of(SIZE);
        let (to_main, from_owner) = mpsc::channel();
        let (to_owner, from_main) = mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..BLOCKS).map(|_| alloc_small(class) as usize).collect();
            for &b in &blocks[..BLOCKS - 1] {
                // SAFETY: a live block of ours, freed once.
                unsafe { free_small(b as *mut u8) }.unwrap();
            }
            let heap = thread::get() as *mut Heap;
            // As a slow path of ours would: hold the lock until a pass has found it held.
            // SAFETY: our own heap; the lock word is an atomic.
            let lock = unsafe { &*ptr::addr_of!((*heap).segments_lock) };
            lock.lock_owner();
            to_main.send(heap as usize).unwrap();
            while BUSY_HEAP.load(Ordering::Acquire) != heap as usize {
                std::thread::yield_now();
            }
            lock.unlock();
            from_main.recv().unwrap();
            let last = blocks[BLOCKS - 1];
            // SAFETY: as above.
            unsafe { free_small(last as *mut u8) }.unwrap();
        });
        let heap = from_owner.recv().unwrap() as *mut Heap;
        let pass = super::foreign_pass(0, PurgeMode::DontNeed, TEST_WAIT_MS);
        let left = dirty_units(heap);
        to_owner.send(()).unwrap();
        owner.join().unwrap();
        eprintln!("pass: {pass:?}");
        assert_eq!(
            left, 0,
            "the busy heap kept {left} dirty units after the pass"
        );
    }
}
