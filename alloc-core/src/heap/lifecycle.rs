//! Heap lifecycle: creating a heap or adopting an abandoned one for a starting thread,
//! giving a heap up, and the heap lists' part of `fork`. Owns the global heap lists;
//! calls `meta`, `slow` (trim) and `thread`. The thread and process events that drive it
//! (first allocation, the exit hook, the fork handlers) are `init`'s.
//!
//! A heap is never freed: a dying thread trims it (empty pages and segments go back)
//! and pushes it on the abandoned stack, and the next new thread adopts it whole. Under
//! thread churn the number of heaps stays at the peak number of live threads, and
//! blocks other threads free into an abandoned heap are collected by its adopter.

use super::{empty_page, slow, Heap, PageQueue, CLASSES};
use crate::sync::atomic::AtomicPtr;
use crate::sync::SpinLock;
use crate::{meta, thread};
use core::ptr;

struct HeapLists {
    all: *mut Heap,
    abandoned: *mut Heap,
    count: usize,
    abandoned_count: usize,
}

// SAFETY: the heap pointers are only followed under the lock.
unsafe impl Send for HeapLists {}

static HEAPS: SpinLock<HeapLists> = SpinLock::new(HeapLists {
    all: ptr::null_mut(),
    abandoned: ptr::null_mut(),
    count: 0,
    abandoned_count: 0,
});

/// Heap counts: created, and currently abandoned (waiting for adoption).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapCounts {
    pub heaps: usize,
    pub abandoned: usize,
}

pub fn heap_counts() -> HeapCounts {
    let lists = HEAPS.lock();
    HeapCounts {
        heaps: lists.count,
        abandoned: lists.abandoned_count,
    }
}

/// A heap for a starting thread: an abandoned one if any (adopted whole), else a new
/// one. Null when out of metadata memory.
pub fn adopt_or_create() -> *mut Heap {
    {
        let mut lists = HEAPS.lock();
        let heap = lists.abandoned;
        if !heap.is_null() {
            // SAFETY: abandoned heaps are live and linked only here.
            lists.abandoned = unsafe { (*heap).abandoned_next };
            lists.abandoned_count -= 1;
            return heap;
        }
    }
    let heap =
        meta::alloc(core::mem::size_of::<Heap>(), core::mem::align_of::<Heap>()) as *mut Heap;
    if heap.is_null() {
        return heap;
    }
    // SAFETY: fresh metadata memory sized and aligned for a Heap.
    unsafe {
        heap.write(Heap {
            current: [empty_page(); CLASSES],
            counts: core::array::from_fn(|_| Default::default()),
            queues: [PageQueue {
                first: ptr::null_mut(),
                last: ptr::null_mut(),
            }; CLASSES],
            pending: AtomicPtr::new(ptr::null_mut()),
            segments: ptr::null_mut(),
            next_purge_ms: 0,
            all_next: ptr::null_mut(),
            abandoned_next: ptr::null_mut(),
        });
        let mut lists = HEAPS.lock();
        (*heap).all_next = lists.all;
        lists.all = heap;
        lists.count += 1;
    }
    heap
}

/// Gives a heap up: trims it and pushes it for adoption.
///
/// # Safety
/// The caller owns `heap` (its thread is exiting) and never uses it again.
pub unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: the caller owns `heap` (its thread is exiting, or we are a fork child).
    unsafe {
        slow::trim(&mut *heap);
        let mut lists = HEAPS.lock();
        (*heap).abandoned_next = lists.abandoned;
        lists.abandoned = heap;
        lists.abandoned_count += 1;
    }
}

/// In a fork child only the forking thread survives: every other thread's heap is
/// abandoned so the child can adopt its memory.
pub fn fork_child() {
    let own = thread::get();
    let mut orphans: *mut Heap = ptr::null_mut();
    {
        let lists = HEAPS.lock();
        let mut heap = lists.all;
        while !heap.is_null() {
            // SAFETY: heaps in the list are live; the other threads are gone.
            unsafe {
                let next = (*heap).all_next;
                let mut abandoned = lists.abandoned;
                let mut is_abandoned = false;
                while !abandoned.is_null() {
                    is_abandoned |= abandoned == heap;
                    abandoned = (*abandoned).abandoned_next;
                }
                if heap as usize != own && !is_abandoned {
                    (*heap).abandoned_next = orphans;
                    orphans = heap;
                }
                heap = next;
            }
        }
    }
    while !orphans.is_null() {
        // SAFETY: as above; each orphan is pushed once.
        unsafe {
            let next = (*orphans).abandoned_next;
            abandon(orphans);
            orphans = next;
        }
    }
}

/// Locks the heap lists across `fork`.
pub fn fork_prepare() {
    HEAPS.raw_lock();
}

/// # Safety
/// After `fork_prepare` on this thread.
pub unsafe fn fork_release() {
    // SAFETY: caller contract.
    unsafe { HEAPS.raw_unlock() };
}

/// Visits every heap ever created (heaps are never freed, so this is safe while their
/// owners run; the counts read are each a consistent word, possibly a moment old).
pub fn for_each_heap(mut f: impl FnMut(&Heap)) {
    let lists = HEAPS.lock();
    let mut heap = lists.all;
    while !heap.is_null() {
        // SAFETY: heaps in the list are live forever.
        unsafe {
            f(&*heap);
            heap = (*heap).all_next;
        }
    }
}
