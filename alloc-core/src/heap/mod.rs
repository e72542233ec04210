//! Thread-local heaps: the small-object fast path. A heap owns segments (from the region
//! table), their pages and a queue of pages per size class; it calls `region` (through
//! `segment`), `meta` (the heap structs, and allocations made with no heap or from
//! inside the allocator), `os`, `space`, `thread`, `purge` and `reclaim` (the slow
//! path's purges), `misuse` (bad frees), `large::cache` (a heap's medium cache, flushed
//! when it is abandoned), `prof` (at refills, and frees of blocks of sampled pages) and
//! `init` from one place only: a thread's first allocation starts the thread there
//! (`slow`).
//!
//! `alloc_small` pops the current page's free list; `free_small` masks the pointer to its
//! segment header, validates the block and pushes it on the page's local list when this
//! thread owns the page, or on the page's atomic list otherwise. Neither touches the
//! region table or takes a lock (a free of a block of a page the profiler marked leaves
//! the fast path: `free_on_marked_page`, which may take the profiler's table lock). Everything else is in `slow.rs`, `lifecycle.rs` and `repair.rs`;
//! `reclaim.rs` lets any thread purge the free units of every heap (idle ones included)
//! and retire the pages that only other threads freed into.
//!
//! The heap profiler (`prof`) adds nothing to the fast paths: the slow path charges each
//! refilled list to the thread's sample countdown at once and cuts the list before a
//! sample point, so the sampled allocation reaches the slow path (`slow::alloc_slow`).
//! A sampled block stays on its page, which is marked (`Page::mark_sampled`: the copy
//! of the divisor magic the fast paths read is zeroed), so the fast free's block test
//! fails for every block of it and their frees reach `free_small`, which tells the
//! profiler (`free_on_marked_page`); the owner clears the mark when no sampled block of
//! the page is left.

mod lifecycle;
pub mod page;
pub mod reclaim;
mod repair;
pub mod segment;
pub mod segments_lock;
pub mod size_class;
mod slow;
#[cfg(test)]
pub(crate) mod test_hooks;

use crate::large::cache::RegionCache;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::SpinLock;
use crate::thread;
use page::{free_cookie, Block, Page, PendingPages};
use segment::Segment;
use size_class::CLASSES;

pub use lifecycle::{
    abandon, adopt_or_create, cached_while_forking, for_each_heap, fork_child, fork_prepare,
    fork_release, heap_counts, HeapCounts,
};
pub use size_class::{class_for, class_of, class_size, small_class_of, SMALL_MAX};

/// Per-class queue of pages with (possibly) free blocks; `current[class]` is its head.
#[derive(Clone, Copy)]
struct PageQueue {
    first: *mut Page,
    last: *mut Page,
}

/// The page each class allocates from (`current[class]`): the queue head, or the static
/// empty page (whose free list is always null) so the fast path needs no null check.
/// Stored behind one extra entry that is always the empty page: entry `class + 1`
/// serves `class`, so a request of `size <= LINEAR_MAX` bytes finds its page at entry
/// `ceil(size / LINEAR_STEP)`, the class of the linear range plus one, with no
/// subtraction and no test for size 0 (which meets the empty page and takes the slow
/// path). This is mimalloc's `pages_free_direct` for the sizes our classes index
/// linearly.
struct CurrentPages {
    entries: [*mut Page; CLASSES + 1],
}

impl CurrentPages {
    const fn new() -> Self {
        CurrentPages {
            entries: [empty_page(); CLASSES + 1],
        }
    }

    /// The page of entry `entry` (`class + 1`, or `size_class::linear_entry(size)`).
    ///
    /// # Safety
    /// `entry <= CLASSES`.
    #[inline(always)]
    unsafe fn entry(&self, entry: usize) -> *mut Page {
        debug_assert!(entry <= CLASSES);
        // SAFETY: caller contract.
        unsafe { *self.entries.get_unchecked(entry) }
    }
}

impl core::ops::Index<usize> for CurrentPages {
    type Output = *mut Page;
    fn index(&self, class: usize) -> &*mut Page {
        &self.entries[class + 1]
    }
}

impl core::ops::IndexMut<usize> for CurrentPages {
    fn index_mut(&mut self, class: usize) -> &mut *mut Page {
        &mut self.entries[class + 1]
    }
}

pub struct Heap {
    current: CurrentPages,
    /// Blocks this heap's thread allocated and freed, per class. Only the owner writes
    /// (a load and a store, no RMW); `stats` sums them over all heaps, and frees made by
    /// a thread count in that thread's heap, so the sums give the live blocks.
    pub(crate) counts: ClassCounts,
    queues: [PageQueue; CLASSES],
    /// Parked-full pages that received remote frees (pushed by freers, popped whole).
    pending: PendingPages,
    /// Segments owned by this heap (the list changes only under `segments_lock`).
    segments: *mut Segment,
    /// Guards `segments` and the segments' unit bookkeeping: taken by the owner on the
    /// slow paths that change them and by foreign purgers (`reclaim`); never on a fast
    /// path.
    segments_lock: reclaim::SegmentsLock,
    /// Next time (ms) the slow path checks for pages to purge.
    next_purge_ms: u64,
    /// Links in the global list of heaps and in the abandoned stack.
    all_next: *mut Heap,
    abandoned_next: *mut Heap,
    /// The thread's cache of freed medium regions: `large::cache` owns its logic; it
    /// lives here so it is found from the thread's slot with the heap, goes with the
    /// heap on exit (emptied first) and can be reached from the heap list (`purge`,
    /// `fork`). Its own lock, a leaf, because other threads may empty it.
    pub(crate) region_cache: SpinLock<RegionCache>,
}

/// Two arrays rather than an array of pairs: a counter is then the class times eight
/// from its array's start, which an x86-64 address computes for free (a scaled index),
/// where a 16-byte pair needs a shift first, on every allocation and every free.
pub(crate) struct ClassCounts {
    pub allocs: [AtomicU64; CLASSES],
    pub frees: [AtomicU64; CLASSES],
}

impl ClassCounts {
    pub(crate) const fn new() -> Self {
        ClassCounts {
            allocs: [const { AtomicU64::new(0) }; CLASSES],
            frees: [const { AtomicU64::new(0) }; CLASSES],
        }
    }
}

/// Frees made by threads without a heap (nested, exiting), per class.
pub(crate) static ORPHAN_FREES: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];

/// Owner-only increment: a plain load and store, which is all a single writer needs.
#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// The page every empty class points at. Never written: its lists are null forever.
struct EmptyPage(Page);
// SAFETY: the static empty page is never modified, only read.
unsafe impl Sync for EmptyPage {}
static EMPTY_PAGE: EmptyPage = EmptyPage(Page::empty());

const fn empty_page() -> *mut Page {
    (&raw const EMPTY_PAGE.0).cast_mut()
}

/// The heap a thread's fast word (`thread::get_fast`) names while the thread has none
/// of its own (before its first allocation, inside the allocator, after its exit):
/// every class's page is the empty page, so a fast path pops nothing and takes its slow
/// path, with no test of the slot first. Never written: a pop from the empty page fails
/// before anything is counted, and no segment names it as its owner.
pub(crate) struct NoHeap(pub(crate) Heap);
// SAFETY: never written (see above); its atomics are never touched.
unsafe impl Sync for NoHeap {}
pub(crate) static NO_HEAP: NoHeap = NoHeap(Heap {
    current: CurrentPages::new(),
    counts: ClassCounts::new(),
    queues: [PageQueue {
        first: core::ptr::null_mut(),
        last: core::ptr::null_mut(),
    }; CLASSES],
    pending: PendingPages::new(),
    segments: core::ptr::null_mut(),
    segments_lock: reclaim::SegmentsLock::new(),
    next_purge_ms: 0,
    all_next: core::ptr::null_mut(),
    abandoned_next: core::ptr::null_mut(),
    region_cache: SpinLock::new(RegionCache::new()),
});

/// Allocates a small block of `class`. Null only when out of memory.
#[inline(always)]
pub fn alloc_small(class: usize) -> *mut u8 {
    // SAFETY: the fast word is this thread's heap or `NO_HEAP`, whose pages are all
    // empty; `class_of` never returns CLASSES or more.
    let block = unsafe { pop_entry(thread::get_fast() as *mut Heap, class + 1) };
    if block.is_null() {
        return alloc_small_miss(class);
    }
    block
}

/// `alloc_small` when the fast word gave no block: the thread has no heap (`slot` is a
/// sentinel), the fast word could not be read with one load (a `dlopen`ed C library:
/// the heap's current page is tried first), or the current page is empty.
#[cold]
#[inline(never)]
fn alloc_small_miss(class: usize) -> *mut u8 {
    let slot = thread::get();
    if slot < thread::SENTINEL_LIMIT {
        return slow::alloc_without_heap(slot, class);
    }
    let heap = slot as *mut Heap;
    // SAFETY: `slot` is this thread's heap, owned by this thread.
    unsafe {
        let block = pop_entry(heap, class + 1);
        if block.is_null() {
            return slow::alloc_slow(heap, class);
        }
        block
    }
}

/// `alloc_small`'s fast path alone, for a front end with a slow path of its own (the C
/// library): a block for a request of `size` bytes at 16-byte alignment, or null when
/// `size` is 0 or above `SMALL_MAX`, the thread has no heap yet (or is inside the
/// allocator) or the class's current page is empty (the heap profiler's sample points
/// end a page's list early, so they reach the slow path too). The caller then calls
/// `alloc`.
#[inline(always)]
pub fn try_alloc_size(size: usize) -> *mut u8 {
    let entry = if size <= size_class::LINEAR_MAX {
        size_class::linear_entry(size)
    } else if size <= SMALL_MAX {
        // Not rare, but already a dozen instructions of class arithmetic: the jump to
        // the shared code goes here rather than on the linear sizes' path.
        core::hint::cold_path();
        class_of(size) + 1
    } else {
        return core::ptr::null_mut();
    };
    // SAFETY: the fast word is this thread's heap or `NO_HEAP`, whose pages are all
    // empty; `entry <= CLASSES`.
    unsafe { pop_entry(thread::get_fast() as *mut Heap, entry) }
}

/// Pops a block from the page at `entry` of the heap's current pages (`class + 1`), or
/// null when it has none.
///
/// # Safety
/// `heap` is the calling thread's heap or `NO_HEAP`; `entry <= CLASSES`.
#[inline(always)]
unsafe fn pop_entry(heap: *mut Heap, entry: usize) -> *mut u8 {
    // SAFETY: caller contract; the page is a live page of the heap or the static empty
    // page (whose `free` is null), which entry 0 always is, so a block implies
    // `entry >= 1` and its class `entry - 1` (unchecked indexing keeps the bounds check
    // off the fast path; the `- 1` folds into the counter's address).
    unsafe {
        let page = (*heap).current.entry(entry);
        let block = (*page).free;
        if block.is_null() {
            return core::ptr::null_mut();
        }
        let next = next_checked(page, block);
        prefetch_for_write(next);
        (*page).free = next;
        (*page).used += 1;
        (*block).cookie = 0;
        bump((*heap).counts.allocs.get_unchecked(entry - 1));
        block as *mut u8
    }
}

/// Starts fetching, for writing, the block the class's next allocation pops: the link
/// just read makes it the list's head, and its line may sit in another CPU's cache
/// (a block freed by another thread) or be cold. The pop's load of its link is otherwise
/// the start of a chain of misses (each pop's load needs the previous one's result),
/// met at the next allocation of the class, by which time the fetch has usually ended.
/// A hint: it never faults (null, the list's end, included).
#[inline(always)]
pub(crate) fn prefetch_for_write(block: *mut Block) {
    // `prefetchw` (the line comes exclusive: the pop and the caller write the block),
    // which `_MM_HINT_ET0` emits only with the `prfchw` target feature; x86-64 CPUs
    // without it execute the opcode as a no-op.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults nor changes memory.
    unsafe {
        core::arch::asm!(
            "prefetchw [{0}]",
            in(reg) block,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

/// The link of a block being popped; with the `secure` feature, checked to stay inside
/// the page (a corrupted link means a write into freed memory).
///
/// # Safety
/// `block` is the head of `page`'s free list.
#[inline(always)]
pub(crate) unsafe fn next_checked(page: *mut Page, block: *mut Block) -> *mut Block {
    // SAFETY: caller contract.
    let next = unsafe { Block::load_next(block) };
    #[cfg(feature = "secure")]
    // SAFETY: caller contract: `page` is live.
    unsafe {
        if !next.is_null()
            && (next as usize).wrapping_sub((*page).start) >= (*page).end - (*page).start
        {
            crate::misuse::report(
                crate::misuse::Misuse::CorruptFreeList,
                "malloc",
                block as *const u8,
            );
        }
    }
    #[cfg(not(feature = "secure"))]
    let _ = page;
    next
}

/// With the `secure` feature, wipes a freed block (past its header) so freed data does
/// not linger.
#[inline(always)]
unsafe fn zero_on_free(block: *mut Block, page: *mut Page) {
    #[cfg(feature = "secure")]
    // SAFETY: the block is at least `block_size` bytes, the header is 16.
    unsafe {
        let size = (*page).block_size as usize;
        core::ptr::write_bytes((block as *mut u8).add(16), 0, size - 16);
    }
    #[cfg(not(feature = "secure"))]
    let _ = (block, page);
}

/// What `free_small` found wrong with a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallFreeError {
    /// Not the start of a block of a live page (interior, misaligned or stale pointer).
    NotABlock,
    /// The block is already free.
    DoubleFree,
}

/// Frees a block of a segment. Never locks; on the owning thread, never an atomic RMW.
///
/// # Safety
/// `p` lies in a live segment (its `space` slot says so).
#[inline(always)]
pub unsafe fn free_small(p: *mut u8) -> Result<(), SmallFreeError> {
    let addr = p as usize;
    // SAFETY: the slot is a live segment, whose header sits at its base. Until the block
    // is published, its page is live (the block counts in `used`); what a remote freer
    // may read of it is said in `page`'s module doc.
    unsafe {
        let seg = Segment::of(addr);
        let page = Segment::page_of(seg, addr);
        if !Page::is_block_start_exact(page, addr) {
            return Err(SmallFreeError::NotABlock);
        }
        let block = p as *mut Block;
        let cookie = free_cookie(block);
        if (*block).cookie == cookie {
            return Err(SmallFreeError::DoubleFree);
        }
        if Page::is_marked(page) && free_on_marked_page(seg, page, p) {
            // Deferred by the profiler: the block stays live for now.
            return Ok(());
        }
        (*block).cookie = cookie;
        free_validated(seg, page, block);
    }
    Ok(())
}

/// The profiler's part of a free of a live block of a marked page (`Page::mark_sampled`:
/// every free of its blocks comes here): a sampled block's record is dropped and the
/// page's count lowered, before the block is published. The owner also clears the mark
/// when no sampled block is left (another thread's free of the last one leaves that to
/// the owner's next free or refill of the page). True if the profiler deferred the free
/// instead (a signal handler of the thread holding its table's lock, see
/// `prof::defer_free`): the caller then changes nothing.
///
/// # Safety
/// `p` is a live, validated block of `page` in `seg`, not yet published.
#[cold]
#[inline(never)]
unsafe fn free_on_marked_page(seg: *mut Segment, page: *mut Page, p: *mut u8) -> bool {
    // SAFETY: caller contract: the page stays live until the block is published (and a
    // deferred block stays live).
    unsafe {
        match crate::prof::forget_if_sampled(p) {
            Ok(true) => Page::unsampled(page),
            Ok(false) => {}
            Err(_) => {
                crate::prof::defer_free(p);
                return true;
            }
        }
        if (*seg).heap == thread::get() {
            (*page).unmark_if_unsampled();
        }
    }
    false
}

/// `realloc` of a sampled small block (its record already dropped by the profiler,
/// before the block may move): one fewer sampled block on its page, which stays marked
/// until its owner finds none left.
///
/// # Safety
/// `p` is a live block of a live segment.
pub unsafe fn sampled_block_forgotten(p: *const u8) {
    let addr = p as usize;
    // SAFETY: caller contract.
    unsafe { Page::unsampled(Segment::page_of(Segment::of(addr), addr)) }
}

/// The end of a free once the block is validated and carries its free cookie: onto the
/// local list if this thread owns the page, else onto the page's atomic list.
///
/// # Safety
/// `block` is a live block of `page` in `seg`, its cookie just set by this free.
#[inline(always)]
unsafe fn free_validated(seg: *mut Segment, page: *mut Page, block: *mut Block) {
    // SAFETY: caller contract.
    unsafe {
        let slot = thread::get();
        if (*seg).heap == slot {
            if push_local(slot as *mut Heap, page, block) {
                slow::free_local_slow(slot as *mut Heap, page);
            }
        } else {
            zero_on_free(block, page);
            slow::count_remote_free(slot, (*page).class as usize);
            // Publish last: after this push the page may be gone, unless we won its
            // hand-off, which keeps it (`Pending`) until its owner pops it.
            if (*page).thread_free.push(block) {
                slow::hand_off_pending((*seg).heap as *mut Heap, page);
            }
        }
    }
}

/// `free_validated` out of line, for `free_small_fast`'s `NotOwned` outcome (frees into
/// another thread's page, or any free while the slot could not be read with one load):
/// sets the cookie the fast path checked and finishes the free, without validating the
/// block again.
///
/// # Safety
/// `block` is a live, validated block of `page`; nothing has changed since the check.
#[cold]
#[inline(never)]
pub unsafe fn free_not_owned(page: *mut Page, block: *mut Block) {
    // SAFETY: caller contract; the segment header sits at the segment base.
    unsafe {
        (*block).cookie = free_cookie(block);
        free_validated(Segment::of(block as usize), page, block);
    }
}

/// What `free_small_fast` left to its caller.
pub enum FastFree {
    /// The block is on its page's local list.
    Done,
    /// The block is freed, and its page must be un-parked or retired:
    /// `retire_after_free(heap, page)`.
    Retire(*mut Heap, *mut Page),
    /// A live block of a page the fast path cannot free into (another thread's, or the
    /// slot was not read with one load): nothing changed; `free_not_owned(page, block)`.
    NotOwned(*mut Page, *mut Block),
    /// Nothing was changed: take the full path (`free_small` and its misuse reports),
    /// because the pointer is not a live block, or its page is marked for the heap
    /// profiler (`Page::mark_sampled`).
    Slow,
}

/// `free_small` for the common case only, changing nothing unless it completes: a live
/// block of a page owned by the calling thread. Every other outcome is returned to the
/// caller, which ends in a tail call, so the caller's fast path needs no stack frame.
///
/// # Safety
/// `seg` is the base of a live segment, as `space::segment_slot(p)` gives it: `p` lies
/// in it, or is an address above the user space that aliases its slot.
#[inline(always)]
pub unsafe fn free_small_fast(seg: usize, p: *mut u8) -> FastFree {
    let addr = p as usize;
    // SAFETY: `seg` is a live segment, whose header sits at its base; the block's words
    // are read only once `is_block_start` placed it inside a page (an aliasing address
    // never is).
    unsafe {
        let seg = seg as *mut Segment;
        let page = Segment::page_of(seg, addr);
        if !Page::is_block_start(page, addr) {
            return FastFree::Slow;
        }
        let block = p as *mut Block;
        let cookie = free_cookie(block);
        if (*block).cookie == cookie {
            return FastFree::Slow;
        }
        let slot = thread::get_for_owner_check();
        if (*seg).heap != slot {
            return FastFree::NotOwned(page, block);
        }
        (*block).cookie = cookie;
        let heap = slot as *mut Heap;
        if push_local(heap, page, block) {
            return FastFree::Retire(heap, page);
        }
        FastFree::Done
    }
}

/// Un-parks or retires `page` after a free emptied it or freed a block of a full page
/// (what `free_small_fast` returned as `Retire`).
///
/// # Safety
/// `heap` is the calling thread's heap and owns `page`.
#[inline(always)]
pub unsafe fn retire_after_free(heap: *mut Heap, page: *mut Page) {
    // SAFETY: forwarded contract.
    unsafe { slow::free_local_slow(heap, page) }
}

/// Pushes `block` (its free cookie already set) on the local list of `page`, owned by
/// the calling thread's `heap`. True when the page must then go through
/// `slow::free_local_slow`.
///
/// # Safety
/// `heap` is the calling thread's heap and owns `page`; `block` is a live block of it.
#[inline(always)]
unsafe fn push_local(heap: *mut Heap, page: *mut Page, block: *mut Block) -> bool {
    // SAFETY: caller contract. A live page's class is below CLASSES (set by
    // `Page::init`).
    unsafe {
        bump((*heap).counts.frees.get_unchecked((*page).class as usize));
        zero_on_free(block, page);
        Block::store_next(block, (*page).local_free);
        (*page).local_free = block;
        (*page).used -= 1;
        if (*page).used == 0 {
            // An emptied page that is alone in its class queue stays (a class that
            // oscillates around one page must not give it back each time): decided
            // here, without the call. The links are tested together: one branch.
            let linked = (*page).prev as usize | (*page).next as usize;
            return linked != 0 || (*page).in_full;
        }
        (*page).in_full
    }
}

/// The block size of `p` if it is the start of a live (not free) block, else `None`:
/// `is_block_start`, `is_free_block` and `usable_size` with one page lookup.
///
/// # Safety
/// As `free_small_fast`: `seg` is the live segment `space::segment_slot(p)` gave.
#[inline(always)]
pub unsafe fn live_block_size(seg: usize, p: *const u8) -> Option<usize> {
    let addr = p as usize;
    // SAFETY: caller contract; the block's words are read only once `is_block_start`
    // placed it inside the page (an aliasing address never is).
    unsafe {
        let page = Segment::page_of(seg as *mut Segment, addr);
        if !Page::is_block_start(page, addr) {
            return None;
        }
        let block = p as *const Block;
        ((*block).cookie != free_cookie(block)).then_some((*page).block_size as usize)
    }
}

/// The usable size of a small block.
///
/// # Safety
/// `p` is a live block of a live segment.
#[inline]
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: caller contract; `block_size` is fixed while the page is live.
    unsafe { (*Segment::page_of(Segment::of(p as usize), p as usize)).block_size as usize }
}

/// True if `p` is the start of a block ever carved (the block may be free: see
/// `is_free_block`), on a page marked for the profiler or not.
///
/// # Safety
/// `p` lies in a live segment.
pub unsafe fn is_block_start(p: *const u8) -> bool {
    let addr = p as usize;
    // SAFETY: caller contract.
    unsafe { Page::is_block_start_exact(Segment::page_of(Segment::of(addr), addr), addr) }
}

/// True if the block at `p` carries the free cookie (it is on a free list).
///
/// # Safety
/// `p` is a block start of a live page.
pub unsafe fn is_free_block(p: *const u8) -> bool {
    let block = p as *const Block;
    // SAFETY: caller contract: a carved block of at least 16 bytes.
    unsafe { (*block).cookie == free_cookie(block) }
}
