//! Repairing a heap orphaned by `fork`: a heap whose owner was a thread of the parent
//! other than the forking one. That owner may have stopped anywhere in its owner-only,
//! lock-free updates (a page half initialised, a queue half linked, a free list half
//! merged by `collect`), so nothing the heap links together can be trusted. The adopter
//! (the first child thread to need a heap) rebuilds it here from the ground truth, the
//! segments' page descriptors, before using it. Called only by `lifecycle`; calls
//! `segment`, `page`, `slow` (queues, trim), `space` and `os` (the clock).
//!
//! What is trusted, and why. The child's memory is the parent's at one instant; on
//! x86-64 (TSO) the owner's stores reach memory in program order, so each field holds
//! either its old or its new value, and every structure is as the owner left it between
//! two of its stores. Every pointer followed here is validated before it is used
//! (segments: a live segment slot owned by this heap; blocks: inside the page's carved
//! part, on a block boundary, marked free, seen once), and every walk is bounded. What
//! fails validation is dropped: the few blocks or the page an owner was mid-way through
//! are leaked in this child (counted as used), never handed out twice.
//!
//! - Segments: the heap's segment list, followed forward (`next` is written before a
//!   segment becomes the head, and unlinked before it is released).
//! - Pages: a descriptor counts as a live page only if every field is what
//!   `Segment::alloc_page` writes for its units (so a half-initialised one does not)
//!   and its units are claimed; units claimed by no live page go back to the segment.
//! - Blocks: a page's free blocks are the union of its three lists, deduplicated; its
//!   `used` count is recomputed from them. Remote freers of the child may push onto
//!   `thread_free` meanwhile: that list is taken atomically (`ThreadFree::take_all`).
//! - The segments lock (`reclaim`) is inherited if the owner held it at `fork`, and
//!   held while the segments are rebuilt.
//! - Queues and the pending stack are rebuilt: every live page goes back into its class
//!   queue (parked-full ones too: the next allocation parks them again).

use super::page::{free_cookie, Block, Page, PendingPages};
use super::segment::{Segment, HEADER_SIZE, SEGMENTS, SEGMENT_DIRTY_BYTES, SMALL_PAGE_BYTES};
use super::segment::{SEGMENT_SIZE, UNITS, UNIT_SIZE};
use super::size_class::{class_size, CLASSES, MIN_BLOCK};
use super::{empty_page, slow, Heap};
use crate::space::{self, SlotKind};
use crate::sync::atomic::Ordering;
use core::ptr;

/// The most blocks a page can hold: a one-unit page of the smallest class. Multi-unit
/// pages (8 units) serve only classes above `SMALL_PAGE_MAX_BLOCK` (4 KiB), far fewer.
const MAX_BLOCKS: usize = UNIT_SIZE / MIN_BLOCK;
const BITMAP_WORDS: usize = MAX_BLOCKS / 64;

/// Rebuilds `heap` from its segments' page descriptors, then trims it as an exiting
/// thread would (empty pages and segments go back).
///
/// # Safety
/// The caller has just adopted `heap` (nobody else owns it) and its owner no longer
/// exists (a thread of the process this one was forked from).
pub unsafe fn rebuild_orphan(heap: *mut Heap) {
    // SAFETY: caller contract: we own the heap now.
    let heap = unsafe { &mut *heap };
    for class in 0..CLASSES {
        heap.queues[class].first = ptr::null_mut();
        heap.queues[class].last = ptr::null_mut();
        heap.current[class] = empty_page();
    }
    // SAFETY: as above.
    unsafe {
        end_pending_hand_offs(heap);
        // The segments lock may still be held by the vanished owner (it forked while
        // that thread was in a slow path): inherited, not waited for. A purger of this
        // child skips the heap until the rebuilt segments are published by the unlock.
        heap.segments_lock.lock_owner_inheriting();
        rebuild_segments(heap);
        heap.segments_lock.unlock();
        slow::trim(heap);
    }
}

/// Takes the pending stack: its pages are found again through their segments; their
/// hand-off is over (`drain_pending` does the same).
unsafe fn end_pending_hand_offs(heap: &mut Heap) {
    let mut page = heap.pending.take_all();
    let mut budget = (SEGMENTS.get() as usize + 1) * UNITS;
    while !page.is_null() && budget > 0 {
        budget -= 1;
        let seg = Segment::of(page as usize);
        // SAFETY: pages on our stack lie in our segments; checked before use.
        unsafe {
            if !owns_segment(heap, seg) {
                return;
            }
            let next = PendingPages::next(page);
            (*page).thread_free.end_pending();
            page = next;
        }
    }
}

/// True if `seg` is a live segment of `heap`.
fn owns_segment(heap: &Heap, seg: *mut Segment) -> bool {
    seg as usize & (SEGMENT_SIZE - 1) == 0
        && !seg.is_null()
        && space::kind_of(seg as usize) == SlotKind::Segment
        // SAFETY: a live segment slot: its header is mapped.
        && unsafe { (*seg).heap } == heap as *const Heap as usize
}

/// Follows the segment list forward, relinking `prev`, and rebuilds each segment; the
/// list ends at the first link that is not one of our live segments.
unsafe fn rebuild_segments(heap: &mut Heap) {
    let mut seg = heap.segments;
    let mut prev: *mut Segment = ptr::null_mut();
    // One more than the count: the counter may be a step behind an interrupted creation.
    let mut budget = SEGMENTS.get() as usize + 1;
    heap.segments = ptr::null_mut();
    while budget > 0 && owns_segment(heap, seg) {
        budget -= 1;
        // SAFETY: validated just above; the heap (and so the segment) is ours.
        unsafe {
            (*seg).prev = prev;
            if prev.is_null() {
                heap.segments = seg;
            } else {
                (*prev).next = seg;
            }
            rebuild_segment(heap, &mut *seg);
            prev = seg;
            seg = (*seg).next;
        }
    }
    if !prev.is_null() {
        // SAFETY: `prev` is our segment.
        unsafe { (*prev).next = ptr::null_mut() };
    }
}

/// The unit bits of a page of `units` units starting at unit `first`.
fn run_bits(first: usize, units: usize) -> u64 {
    if units >= 64 {
        u64::MAX
    } else {
        ((1u64 << units) - 1) << first
    }
}

/// True if `page` (the descriptor at unit `first`) is exactly what `alloc_page` writes
/// for a live page there, with its units claimed and `carved` inside the page.
fn is_live_page(seg: &Segment, first: usize, page: &Page) -> bool {
    let units = page.units as usize;
    if units == 0
        || !units.is_power_of_two()
        || !first.is_multiple_of(units)
        || first + units > UNITS
    {
        return false;
    }
    let class = page.class as usize;
    if class >= CLASSES {
        return false;
    }
    // What `alloc_page` would have made of these units for this class.
    let size = class_size(class);
    let base = seg as *const Segment as usize;
    let start = base + first * UNIT_SIZE + if first == 0 { HEADER_SIZE } else { 0 };
    let span_end = base + (first + units) * UNIT_SIZE;
    let mut made = Page::empty();
    made.init(
        class,
        size,
        units,
        start,
        span_end - (span_end - start) % size,
    );
    // Relaxed: only a page's owner writes it, and that is this thread now.
    let fast_magic = page.divisor_magic.load(Ordering::Relaxed);
    if page.block_size != made.block_size
        || page.block_magic != made.block_magic
        // The fast paths' copy is the magic, or 0 on a page marked for the heap profiler
        // (a live sampled block: the mark and its count are kept, and the profile's
        // record, inherited too, is dropped when the child frees the block).
        || !(fast_magic == 0 || fast_magic == made.block_magic)
        || page.start != made.start
        || page.end != made.end
    {
        return false;
    }
    let run = run_bits(first, units);
    let carved = page.carved.load(Ordering::Relaxed);
    if carved > page.end - page.start
        || !carved.is_multiple_of(size)
        || page.capacity() > MAX_BLOCKS
    {
        return false;
    }
    seg.free_units & run == 0
        && (first..first + units).all(|u| seg.unit_page[u] == Segment::page_offset(first))
}

unsafe fn rebuild_segment(heap: &mut Heap, seg: &mut Segment) {
    let mut live_units = 0u64;
    let mut first = 0;
    while first < UNITS {
        if seg.described & (1 << first) == 0 {
            // Never a page's first unit: its descriptor was never written.
            first += 1;
            continue;
        }
        let page: *mut Page = &mut seg.pages[first];
        // SAFETY: a descriptor of our segment.
        let units = unsafe {
            if is_live_page(seg, first, &*page) {
                rebuild_page(&mut *page);
                slow::queue_push_back(heap, page);
                (*page).units as usize
            } else {
                0
            }
        };
        if units == 0 {
            first += 1;
        } else {
            live_units |= run_bits(first, units);
            first += units;
        }
    }
    // Units claimed by no live page: a page the owner was creating or retiring. They go
    // back to the segment, counted dirty (their contents are unknown).
    let stray = !seg.free_units & !live_units;
    if stray != 0 {
        let bytes = stray.count_ones() as u64 * UNIT_SIZE as u64;
        SMALL_PAGE_BYTES.sub(bytes);
        SEGMENT_DIRTY_BYTES.add(bytes);
        if seg.dirty_units == 0 {
            seg.dirty_since = crate::os::now_ms();
        }
        seg.free_units |= stray;
        seg.dirty_units |= stray;
    }
    for unit in 0..UNITS {
        let described = seg.described & (1 << unit) != 0;
        if described && live_units & (1 << unit) == 0 && seg.pages[unit].units != 0 {
            seg.pages[unit] = Page::empty();
        }
    }
}

/// Rebuilds a live page's free list from its three lists and recomputes `used`.
unsafe fn rebuild_page(page: &mut Page) {
    let mut seen = [0u64; BITMAP_WORDS];
    let mut list: *mut Block = ptr::null_mut();
    let mut count = 0usize;
    let remote = page.thread_free.take_all();
    for (head, carved_ok) in [(page.free, true), (page.local_free, false), (remote, false)] {
        // SAFETY: every block is validated before its link is read.
        unsafe { take_list(page, head, carved_ok, &mut seen, &mut list, &mut count) };
    }
    let carved = page.carved.load(Ordering::Relaxed) / page.block_size as usize;
    page.free = list;
    page.local_free = ptr::null_mut();
    // A heap profiler's cut is undone with the lists it split (the adopter counts anew).
    page.sample_next = false;
    page.used = (carved - count) as u32;
    page.in_full = false;
    page.prev = ptr::null_mut();
    page.next = ptr::null_mut();
    // `pending_next` stays: a foreign purger of this child may hold the page, popped off
    // our pending stack before we adopted the heap, and follows that link to push the
    // rest of its list back (`reclaim::drain_remote_emptied`). A page on no stack never
    // has its link read.
    // Un-park; a page a freer has moved to `Pending` stays pending, as `PendingQueued`
    // (it is, or will be, on our pending stack, which `drain_pending` handles for a
    // queued page; a foreign drainer leaves a queued page alone).
    page.thread_free.unpark();
}

/// Moves the valid prefix of the list at `head` onto `list`: blocks inside the carved
/// part, on a block boundary, not seen before, and marked free (`carved_ok`: or never
/// handed out, cookie 0, as `extend` leaves them on the `free` list).
unsafe fn take_list(
    page: &Page,
    mut block: *mut Block,
    carved_ok: bool,
    seen: &mut [u64; BITMAP_WORDS],
    list: &mut *mut Block,
    count: &mut usize,
) {
    let size = page.block_size as usize;
    let carved_bytes = page.carved.load(Ordering::Relaxed);
    while !block.is_null() {
        let off = (block as usize).wrapping_sub(page.start);
        if off >= carved_bytes || !off.is_multiple_of(size) {
            return;
        }
        let index = off / size;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if seen[word] & bit != 0 {
            return;
        }
        // SAFETY: `block` is a carved block of this page (checked above).
        unsafe {
            let cookie = (*block).cookie;
            if cookie != free_cookie(block) && !(carved_ok && cookie == 0) {
                return;
            }
            seen[word] |= bit;
            let next = Block::load_next(block);
            Block::store_next(block, *list);
            *list = block;
            *count += 1;
            block = next;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::page::PendingPages;
    use super::super::segment::UNIT_SIZE;
    use super::super::{alloc_small, class_of, class_size, free_small, reclaim, slow, Heap};
    use crate::thread;
    use std::sync::mpsc;

    /// A class no other unit test allocates from.
    const SIZE: usize = 2560;
    /// Pages the owner fills (and parks) before it idles.
    const PAGES: usize = 3;

    /// A fork child's adopter rebuilds an orphan while a foreign purger of the child holds
    /// part of its pending stack (`reclaim::drain_remote_emptied` pops the whole stack,
    /// whatever the orphan's lock says, then takes the lock page by page). The rebuild
    /// must leave the held pages' stack links alone: the purger follows them to push
    /// every page back. Pages it can no longer reach stay `PendingQueued` for good: their
    /// owner never retires them, and once parked again no remote free hands them back.
    ///
    /// The interleaving is made by hand on this thread: pop the stack as the purger does
    /// before its first lock section, then `rebuild_orphan` as the adopter does (the
    /// owner thread idles on a channel, as a vanished owner would), then follow the links.
    #[test]
    fn a_rebuild_keeps_the_links_of_pages_a_foreign_purger_holds() {
        let class = class_of(SIZE);
        let per_page = UNIT_SIZE / class_size(class);
        let (to_main, from_owner) = mpsc::channel();
        let (to_owner, from_main) = mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            // Fills `PAGES` pages; the allocation after each parks the full one.
            let blocks: Vec<usize> = (0..PAGES * per_page + 1)
                .map(|_| alloc_small(class) as usize)
                .collect();
            to_main
                .send((thread::get() as *mut Heap as usize, blocks))
                .unwrap();
            // Idle, as a thread of the parent that did not survive the fork.
            let _ = from_main.recv();
        });
        let (heap, blocks) = from_owner.recv().unwrap();
        let heap = heap as *mut Heap;
        // No foreign pass of another test may pop the stack meanwhile.
        reclaim::fork_prepare();
        // SAFETY: the owner idles; this thread plays the remote freer, the purger and
        // the adopter in turn, on the owner's live pages.
        let (reachable, still_pending) = unsafe {
            for page in 0..PAGES {
                // The first remote free of a parked page hands it back to the stack.
                free_small(blocks[page * per_page] as *mut u8).unwrap();
            }
            // The purger pops the stack (before its first lock section)...
            let held = (*heap).pending.take_all();
            let mut on_stack = 0;
            let mut page = held;
            while !page.is_null() {
                on_stack += 1;
                page = PendingPages::next(page);
            }
            assert_eq!(on_stack, PAGES, "every parked page was handed back");
            let mut pages = Vec::new();
            let mut page = held;
            while !page.is_null() {
                pages.push(page);
                page = PendingPages::next(page);
            }
            // ...the adopter rebuilds the orphan...
            super::rebuild_orphan(heap);
            // ...and the purger goes on down its list, pushing back what it keeps.
            let mut reachable = 0;
            let mut page = held;
            while !page.is_null() {
                reachable += 1;
                let next = PendingPages::next(page);
                (*heap).pending.push(page);
                page = next;
            }
            // The adopter's next slow path ends every hand-off it finds.
            slow::drain_pending(&mut *heap);
            let still_pending = pages.iter().filter(|&&p| (*p).is_pending()).count();
            (reachable, still_pending)
        };
        // SAFETY: taken above on this thread.
        unsafe { reclaim::fork_release() };
        drop(to_owner);
        owner.join().unwrap();
        assert_eq!(
            (reachable, still_pending),
            (PAGES, 0),
            "the purger reached {reachable} of {PAGES} pages after the rebuild; \
             {still_pending} stay pending for good"
        );
    }
}
