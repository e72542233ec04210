//! The heap's slow paths: refilling a class from its page queue, fresh pages and
//! segments; un-parking and retiring pages on free; the pending hand-off; periodic
//! purging of unused units. Owner-thread only, except `hand_off_pending`. Changes to
//! the segment list and the segments' unit bits are made under the heap's segments
//! lock (`reclaim`), which foreign purgers take too. Owns nothing; calls the heap's
//! parts, `init` (a thread's start), `meta` (allocations with no heap, or from inside
//! the allocator), `misuse`, `prof` (sampling at refills), `purge`, `reclaim`
//! (`purge_segments`), `os` (the clock) and `thread`.

use super::page::{Block, Page, PendingPages};

const _: () = assert!(core::mem::size_of::<Block>() <= super::size_class::MIN_BLOCK);
use super::segment::Segment;
use super::size_class::{class_size, SMALL_PAGE_MAX_BLOCK};
use super::{empty_page, Heap, PageQueue};
use crate::sync::atomic::Ordering;
use crate::{meta, os, purge, thread};
use core::ptr;

/// Units per page for classes above `SMALL_PAGE_MAX_BLOCK` (512 KiB pages).
const LARGE_PAGE_UNITS: usize = 8;

/// The allocation path of a thread whose slot holds a sentinel.
#[cold]
#[inline(never)]
pub fn alloc_without_heap(slot: usize, class: usize) -> *mut u8 {
    match slot {
        thread::UNINIT => {
            let heap = crate::init::thread_start();
            if heap.is_null() {
                return meta::alloc(class_size(class), crate::MALLOC_ALIGN);
            }
            // SAFETY: a fresh heap owned by this thread.
            unsafe { alloc_slow(heap, class) }
        }
        // Nested inside the allocator, or a thread past its exit hook: the metadata
        // arena serves these few requests without touching heaps or the table.
        _ => meta::alloc(class_size(class), crate::MALLOC_ALIGN),
    }
}

/// Counts a free of a block owned by another heap, in the freeing thread's heap.
#[inline]
pub fn count_remote_free(slot: usize, class: usize) {
    if slot >= thread::SENTINEL_LIMIT {
        // SAFETY: `slot` is this thread's heap; only this thread writes its counts.
        unsafe { super::bump(&(*(slot as *mut Heap)).counts.frees[class]) };
    } else {
        super::ORPHAN_FREES[class].fetch_add(1, Ordering::Relaxed);
    }
}

#[inline(always)]
unsafe fn pop(heap: &Heap, page: *mut Page) -> *mut u8 {
    // SAFETY: caller guarantees `page` is ours and its free list is non-empty.
    unsafe {
        let block = (*page).free;
        let next = super::next_checked(page, block);
        super::prefetch_for_write(next);
        (*page).free = next;
        (*page).used += 1;
        (*block).cookie = 0;
        super::bump(&heap.counts.allocs[(*page).class as usize]);
        block as *mut u8
    }
}

/// Refills `class` and allocates from it.
///
/// # Safety
/// `heap` is this thread's heap.
#[cold]
#[inline(never)]
pub unsafe fn alloc_slow(heap: *mut Heap, class: usize) -> *mut u8 {
    // SAFETY: caller contract: we own the heap and its pages.
    unsafe {
        let heap = &mut *heap;
        let current = heap.current[class];
        if (*current).sample_next {
            // First, before anything else moves: the page choice is the same as without
            // the profiler's cut. Not a tail call: `prof` skips this frame by count.
            return core::hint::black_box(sample_point(heap, current));
        }
        maybe_purge(heap);
        if !heap.pending.is_empty() {
            drain_pending(heap);
        }
        let page = 'found: {
            let mut page = heap.queues[class].first;
            while !page.is_null() {
                if (*page).collect() || (*page).extend() {
                    break 'found page;
                }
                let next = (*page).next;
                // Off the queue before it parks: once parked, the page is no longer
                // ours to touch (a foreign drainer may retire it, `reclaim`).
                queue_remove(heap, page);
                if !(*page).park() {
                    // A remote free raced in: the page has blocks again. It was the
                    // queue's head (the pages before it parked), and is again.
                    queue_push_front(heap, page);
                    (*page).collect();
                    break 'found page;
                }
                page = next;
            }
            let page = fresh_page(heap, class);
            if page.is_null() {
                crate::misuse::out_of_memory(class_size(class), crate::MALLOC_ALIGN);
                return ptr::null_mut();
            }
            queue_push_front(heap, page);
            (*page).extend();
            page
        };
        heap.current[class] = page;
        if crate::prof::sampling() && charge_refill(page) {
            // As above: not a tail call.
            return core::hint::black_box(sample_point(heap, page));
        }
        pop(heap, page)
    }
}

/// The heap profiler's share of a refill, while it samples: the blocks the fast path is
/// about to pop from `page` (all of `free`, which holds every free block of the page
/// after `collect` or `extend`) count toward the thread's sample point at once, instead
/// of one allocation at a time. If the point falls among them, the list is cut before
/// the block it falls in (`Page::cut`), so the allocation that would take that block
/// comes back here (`sample_point`). True if that is the allocation being served now.
///
/// # Safety
/// `page` is the current page of this thread's heap, with free blocks on `free` or
/// `local_free` (it merges them onto `free` itself: `Page::collect_all`).
#[cold]
#[inline(never)]
unsafe fn charge_refill(page: *mut Page) -> bool {
    // SAFETY: caller contract.
    unsafe {
        // Every free block on `free`, where the count and the cut expect them
        // (`collect` may leave some on `local_free`).
        (*page).collect_all();
        // A page whose sampled blocks other threads freed is still marked (they leave
        // that to its owner): a refill is the owner's chance to clear it, if its own
        // frees into the page did not. Here, not in every refill: with the profiler off
        // the refill pays nothing (a page marked before it was switched off is cleared
        // by the owner's next free into it).
        (*page).unmark_if_unsampled();
        let blocks = (*page).carved_blocks() - (*page).used as usize;
        let before = crate::prof::charge_blocks(blocks, (*page).block_size as usize);
        if before == blocks {
            return false;
        }
        (*page).cut(before);
        before == 0
    }
}

/// The allocation at a sample point of `page` (its `free` list is empty, the blocks
/// after the cut wait on `local_free`): it takes the page's next block as usual, and the
/// profiler records it; a recorded block marks its page (`Page::mark_sampled`), so its
/// free reaches the slow path, which tells the profiler. Then the page's blocks, which
/// the fast path has not yet been charged for, are charged as a new refill. The profiler
/// may decline (it is off by now, the thread is inside the profiler, or its table is
/// full): the block is then an ordinary one.
///
/// # Safety
/// `page` is the current page of this thread's heap and has `sample_next` set.
#[cold]
#[inline(never)]
unsafe fn sample_point(heap: &mut Heap, page: *mut Page) -> *mut u8 {
    // SAFETY: caller contract.
    unsafe {
        (*page).sample_next = false;
        // Never false: the blocks after the cut are at least the one the point fell in.
        (*page).collect();
        let block = pop(heap, page);
        // Marked before the block is handed out (see `mark_sampled`).
        if crate::prof::sample_block(block, (*page).block_size as usize) {
            (*page).mark_sampled();
        }
        if !(*page).free.is_null() && crate::prof::sampling() {
            // A point on the first block again (a tiny `prof_sample`) leaves `free` empty
            // and `sample_next` set: the next allocation comes back here.
            charge_refill(page);
        }
        block
    }
}

/// A page for `class` in one of the heap's segments, or in a new one. The unit claims
/// and the segment list change under the segments lock (`reclaim`); a new segment is
/// made outside it (nobody else can reach it before it is linked).
unsafe fn fresh_page(heap: &mut Heap, class: usize) -> *mut Page {
    let size = class_size(class);
    let units = if size <= SMALL_PAGE_MAX_BLOCK {
        1
    } else {
        LARGE_PAGE_UNITS
    };
    // SAFETY: the heap's segment list holds live segments it owns, and we hold the
    // segments lock while we claim units or link a segment.
    unsafe {
        heap.segments_lock.lock_owner();
        let mut seg = heap.segments;
        while !seg.is_null() {
            let page = (*seg).alloc_page(class, size, units);
            if !page.is_null() {
                heap.segments_lock.unlock();
                return page;
            }
            seg = (*seg).next;
        }
        heap.segments_lock.unlock();
        let seg = Segment::create(heap as *mut Heap as usize);
        if seg.is_null() {
            return ptr::null_mut();
        }
        heap.segments_lock.lock_owner();
        (*seg).next = heap.segments;
        if !heap.segments.is_null() {
            (*heap.segments).prev = seg;
        }
        heap.segments = seg;
        let page = (*seg).alloc_page(class, size, units);
        heap.segments_lock.unlock();
        page
    }
}

/// A local free left the page empty or found it parked full.
///
/// # Safety
/// `heap` is this thread's heap and owns `page`.
#[cold]
#[inline(never)]
pub unsafe fn free_local_slow(heap: *mut Heap, page: *mut Page) {
    // SAFETY: caller contract.
    unsafe {
        let heap = &mut *heap;
        if (*page).in_full {
            (*page).unpark();
            queue_push_back(heap, page);
        }
        if (*page).used == 0 {
            retire_if_spare(heap, page);
        }
    }
}

/// Returns an empty page's units to its segment, unless it is its class's only page (a
/// class that oscillates around one page should not map and purge it each time) or a
/// remote freer still holds it for the pending hand-off.
unsafe fn retire_if_spare(heap: &mut Heap, page: *mut Page) {
    // SAFETY: we own `page` (caller contract of our callers).
    unsafe {
        let class = (*page).class as usize;
        let queue = heap.queues[class];
        if queue.first == page && queue.last == page {
            return;
        }
        if (*page).is_pending() {
            return; // drain_pending retires it once the freer has pushed it
        }
        queue_remove(heap, page);
        let seg = Segment::of(page as usize);
        heap.segments_lock.lock_owner();
        Segment::free_page(seg, page, os::now_ms());
        if (*seg).is_empty() && !((*seg).next.is_null() && (*seg).prev.is_null()) {
            release_segment(heap, seg);
        }
        heap.segments_lock.unlock();
    }
}

/// Unlinks an empty segment and gives it back to the region table.
///
/// # Safety
/// `seg` is an empty segment of this heap, whose segments lock the caller holds.
unsafe fn release_segment(heap: &mut Heap, seg: *mut Segment) {
    // SAFETY: caller contract.
    unsafe {
        let (prev, next) = ((*seg).prev, (*seg).next);
        if prev.is_null() {
            heap.segments = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        Segment::release(seg);
    }
}

/// A remote freer won the hand-off of a parked page: give it back to its owner.
///
/// # Safety
/// The caller's `ThreadFree::push` of a block of `page` returned true (it won the
/// hand-off), and `heap` is the heap of `page`'s segment.
#[cold]
#[inline(never)]
pub unsafe fn hand_off_pending(heap: *mut Heap, page: *mut Page) {
    // SAFETY: heaps are never freed (only abandoned and adopted), and a segment's heap
    // never changes; `page` is `Pending`, so it stays live and only we link it until its
    // owner pops it. `pending` is an atomic, reached without a reference to the heap.
    unsafe { (*ptr::addr_of!((*heap).pending)).push(page) }
}

/// Takes back every parked page that remote frees handed to us.
pub(super) unsafe fn drain_pending(heap: &mut Heap) {
    let mut page = heap.pending.take_all();
    // SAFETY: pages on the stack are ours; each was pushed once (by the freer that made
    // it `Pending`) and is popped here once.
    unsafe {
        while !page.is_null() {
            let next = PendingPages::next(page);
            if (*page).end_hand_off() {
                queue_push_back(heap, page);
            }
            (*page).collect();
            if (*page).used == 0 {
                retire_if_spare(heap, page);
            }
            page = next;
        }
    }
}

/// Purges this heap's unused units and runs the global purge when their time has come.
unsafe fn maybe_purge(heap: &mut Heap) {
    let now = os::now_ms();
    if now < heap.next_purge_ms {
        return;
    }
    let (delay, mode) = purge::settings();
    heap.next_purge_ms = now + purge::interval_ms(delay);
    heap.segments_lock.lock_owner();
    // SAFETY: we hold the heap's segments lock.
    let bytes = unsafe { super::reclaim::purge_segments(heap, now, delay, mode) };
    heap.segments_lock.unlock();
    purge::record_heap_purge(bytes);
    purge::tick(now);
}

// ---- page queues ------------------------------------------------------------------

fn set_current(heap: &mut Heap, class: usize) {
    let first = heap.queues[class].first;
    heap.current[class] = if first.is_null() { empty_page() } else { first };
}

pub(super) unsafe fn queue_push_front(heap: &mut Heap, page: *mut Page) {
    // SAFETY: the heap owns `page`, which is in no queue.
    unsafe {
        let class = (*page).class as usize;
        let q: &mut PageQueue = &mut heap.queues[class];
        (*page).prev = ptr::null_mut();
        (*page).next = q.first;
        if q.first.is_null() {
            q.last = page;
        } else {
            (*q.first).prev = page;
        }
        q.first = page;
        set_current(heap, class);
    }
}

pub(super) unsafe fn queue_push_back(heap: &mut Heap, page: *mut Page) {
    // SAFETY: as in `queue_push_front`.
    unsafe {
        let class = (*page).class as usize;
        let q: &mut PageQueue = &mut heap.queues[class];
        (*page).next = ptr::null_mut();
        (*page).prev = q.last;
        if q.last.is_null() {
            q.first = page;
        } else {
            (*q.last).next = page;
        }
        q.last = page;
        set_current(heap, class);
    }
}

pub(super) unsafe fn queue_remove(heap: &mut Heap, page: *mut Page) {
    // SAFETY: the heap owns `page`, which is in its class queue.
    unsafe {
        let class = (*page).class as usize;
        let q: &mut PageQueue = &mut heap.queues[class];
        let (prev, next) = ((*page).prev, (*page).next);
        if prev.is_null() {
            q.first = next;
        } else {
            (*prev).next = next;
        }
        if next.is_null() {
            q.last = prev;
        } else {
            (*next).prev = prev;
        }
        (*page).prev = ptr::null_mut();
        (*page).next = ptr::null_mut();
        set_current(heap, class);
    }
}

/// Frees everything that can be freed when a heap is abandoned: collects every page,
/// retires the empty ones and releases empty segments.
pub(super) unsafe fn trim(heap: &mut Heap) {
    // SAFETY: the caller owns the heap (exiting thread or fork child).
    unsafe {
        drain_pending(heap);
        for class in 0..super::CLASSES {
            let mut page = heap.queues[class].first;
            while !page.is_null() {
                let next = (*page).next;
                // A profiler cut's blocks come back to `free`; the next owner samples by
                // its own count.
                (*page).sample_next = false;
                (*page).collect_all();
                if (*page).used == 0 && !(*page).is_pending() {
                    queue_remove(heap, page);
                    let seg = Segment::of(page as usize);
                    heap.segments_lock.lock_owner();
                    Segment::free_page(seg, page, os::now_ms());
                    heap.segments_lock.unlock();
                }
                page = next;
            }
        }
        heap.segments_lock.lock_owner();
        #[cfg(all(test, not(loom)))]
        super::test_hooks::pause_point_at(super::test_hooks::Site::TrimLocked);
        let mut seg = heap.segments;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).is_empty() {
                release_segment(heap, seg);
            }
            seg = next;
        }
        heap.segments_lock.unlock();
    }
}
