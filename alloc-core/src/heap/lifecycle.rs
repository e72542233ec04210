//! Heap lifecycle: creating a thread's heap on its first allocation, giving it up at
//! thread exit (a `pthread` key destructor), adopting abandoned heaps, and resetting
//! after `fork`. Owns the global heap lists; calls `meta`, `region::epoch` and `thread`.
//!
//! A heap is never freed: a dying thread trims it (empty pages and segments go back)
//! and pushes it on the abandoned stack, and the next new thread adopts it whole. Under
//! thread churn the number of heaps stays at the peak number of live threads, and
//! blocks other threads free into an abandoned heap are collected by its adopter.

use super::{empty_page, slow, Heap, PageQueue, CLASSES};
use crate::region::epoch;
use crate::sync::SpinLock;
use crate::{meta, thread, Reentrancy};
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

/// Runs `on_thread_exit` for every thread that had a heap.
static EXIT_KEY: thread::ExitKey = thread::ExitKey::new(on_thread_exit);

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

/// Creates or adopts this thread's heap. Null when out of memory (the caller then
/// serves the request from metadata memory).
pub fn init_thread() -> *mut Heap {
    // pthread_setspecific may call calloc (keys past the first 32): that nested call
    // must not come back here.
    let inside = Reentrancy::enter();
    // Before this thread gets a heap, so before its fast path can succeed.
    thread::verify_static_tls();
    let key = exit_key();
    let heap = adopt_or_create();
    if !heap.is_null() {
        if let Some(key) = key {
            // SAFETY: a valid key; the value is only read back by our destructor.
            unsafe { libc::pthread_setspecific(key, heap as *const libc::c_void) };
        }
    }
    drop(inside);
    if !heap.is_null() {
        thread::set(heap as usize);
    }
    heap
}

fn exit_key() -> Option<libc::pthread_key_t> {
    EXIT_KEY.get(process_start)
}

/// Once per process, on the first heap: the exit report and the background purger,
/// when the options ask for them.
fn process_start() {
    #[cfg(feature = "secure")]
    super::page::hardening::init();
    let options = crate::options::get();
    if options.stats_at_exit {
        // SAFETY: registering a plain `extern "C"` function.
        unsafe { libc::atexit(print_stats_at_exit) };
    }
    if options.background_purge {
        crate::purge::start_background_thread();
    }
}

extern "C" fn print_stats_at_exit() {
    crate::snapshot::print_to_stderr();
}

fn adopt_or_create() -> *mut Heap {
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
            pending: super::page::PendingPages::new(),
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
unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: the caller owns `heap` (its thread is exiting, or we are a fork child).
    unsafe {
        slow::trim(&mut *heap);
        let mut lists = HEAPS.lock();
        (*heap).abandoned_next = lists.abandoned;
        lists.abandoned = heap;
        lists.abandoned_count += 1;
    }
}

/// The `pthread` key destructor: runs once per exiting thread that had a heap.
unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let heap = value as *mut Heap;
    thread::set(thread::BUSY);
    // SAFETY: `value` is the heap `init_thread` stored for this thread.
    unsafe { abandon(heap) };
    epoch::release_thread();
    // Later allocations of this thread (other destructors) go to metadata memory.
    thread::set(thread::DEAD);
}

/// In a fork child only the forking thread survives: every other thread's heap is
/// abandoned so the child can adopt its memory.
pub fn fork_child() {
    // SAFETY: called from the engine's fork-child hook, single-threaded.
    unsafe { EXIT_KEY.after_fork_in_child() };
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
