//! Our own epoch collector (crossbeam-epoch) for the region table's grace periods.
//! It owns the collector and each thread's registration; it calls `crossbeam_epoch` and
//! `meta` (the handle lives in metadata memory).
//!
//! Why not `crossbeam_epoch::pin()`: the default collector is built lazily inside a
//! `Once` and allocates, so pinning from inside `GlobalAlloc::alloc` re-enters that
//! `Once` on the program's first allocation and deadlocks, and its thread-local handle
//! needs a TLS destructor (glibc registers those with `calloc`, i.e. with us). Here the
//! collector is built once under the re-entrancy flag (its allocations go to `meta`),
//! each thread's `LocalHandle` lives in metadata memory behind a `const` thread-local
//! without `Drop`, and `release_thread` drops it from our thread-exit hook. A fork
//! child abandons the collector and starts a new one (`after_fork_in_child`).

use crate::meta;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::cell::{Cell, UnsafeCell};

/// The collector threads register with: built by the first registration, replaced (and
/// the old one leaked) in a fork child, never freed. Not a `OnceLock`: that cannot be
/// replaced, and a parent thread caught inside its initialisation at `fork` would leave
/// the child waiting for it forever.
static COLLECTOR: AtomicPtr<Collector> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    static HANDLE: Cell<*mut LocalHandle> = const { Cell::new(core::ptr::null_mut()) };
    /// Blocks this thread unlinked and has not yet handed to the collector.
    static PENDING: UnsafeCell<Pending> = const {
        UnsafeCell::new(Pending { len: 0, blocks: [0; BATCH] })
    };
}

/// Blocks handed to the collector as one deferred function (see `defer_meta_free`).
const BATCH: usize = 32;

struct Pending {
    len: usize,
    blocks: [usize; BATCH],
}

fn collector() -> &'static Collector {
    // Acquire pairs with the Release publication in `build_collector`.
    let current = COLLECTOR.load(Ordering::Acquire);
    if current.is_null() {
        return build_collector();
    }
    // SAFETY: a published collector is initialised and never freed.
    unsafe { &*current }
}

/// Builds the collector (it allocates: the caller is inside the allocator, so that goes
/// to `meta`) and publishes it, unless another thread published one first.
#[cold]
#[inline(never)]
fn build_collector() -> &'static Collector {
    let slot = meta::alloc(
        core::mem::size_of::<Collector>(),
        core::mem::align_of::<Collector>(),
    ) as *mut Collector;
    if slot.is_null() {
        crate::fatal("out of metadata memory building the epoch collector");
    }
    // SAFETY: `slot` is fresh metadata memory sized and aligned for a Collector.
    unsafe { slot.write(Collector::new()) };
    // Release publishes the initialised collector to `collector`'s Acquire load; Acquire
    // on failure, because we then use the winner's.
    match COLLECTOR.compare_exchange(ptr::null_mut(), slot, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: published now, never freed.
        Ok(_) => unsafe { &*slot },
        Err(winner) => {
            // SAFETY: ours was never published, so nothing registered with it; the
            // winner is published, hence initialised and never freed.
            unsafe {
                ptr::drop_in_place(slot);
                meta::free(slot as *mut u8);
                &*winner
            }
        }
    }
}

/// Starts a new collector in a fork child, abandoning the old one.
///
/// The hazard: the child has only the forking thread, but every parent thread's
/// registration is still on the old collector's list, and one that was pinned when the
/// process forked reads pinned forever. Threads are pinned at any moment on the
/// table's lock-free lookup path (every large free), during an update, or while an
/// update's end waits for the metadata lock (which `fork_prepare` holds); holding the
/// table's writer mutex across `fork` keeps none of them out. crossbeam advances the
/// epoch only when every pinned participant has seen the current one, so the child's
/// epoch would stop within one step, no deferred free would run again, and a
/// long-lived child that keeps allocating and freeing large objects would grow its
/// metadata without bound (tens of MiB per 30K updates).
///
/// crossbeam has no way to unregister another thread's participant (only dropping
/// its `LocalHandle` does, and a pinned one is finalised at its last unpin, which will
/// never come). So the child leaks the old collector whole: its list of
/// registrations, the garbage queued on it (those frees never run, which is safe) and
/// this thread's old handle, which the slot forgets, so `release_thread` at exit never
/// touches it and the old collector stays alive (a `LocalHandle` owns a reference to
/// it). A bounded, one-time cost per fork: a few KiB per parent thread plus the
/// garbage awaiting its grace period at the moment of `fork`. The next `pin` registers
/// with a fresh collector, which knows only the child's threads.
///
/// Blocks this thread had batched but not sealed stay batched and wait for a grace
/// period of the new collector: no thread can hold them, since no thread of the child
/// was pinned before it started (checked below). Lists whose grace period passed in
/// the parent stay on `EXPIRED` for the child's writers to free.
///
/// If this thread is itself pinned (a guard of ours alive across `fork`: `fork` from a
/// signal handler that interrupted a lookup), readers under that guard would be
/// invisible to a new collector, so the old one stays: safe, only leaky as before.
///
/// Nothing here allocates.
///
/// # Safety
/// Only in a fork child while it is single-threaded, before anything pins.
pub unsafe fn after_fork_in_child() {
    // SAFETY: our caller's contract.
    unsafe { EXIT_KEY.after_fork_in_child() };
    let handle = HANDLE.with(|h| h.get());
    // SAFETY: a non-null slot holds this thread's live registration (see `pin`).
    if !handle.is_null() && unsafe { (*handle).is_pinned() } {
        return;
    }
    HANDLE.with(|h| h.set(ptr::null_mut()));
    // Relaxed: the child has one thread; threads it starts later see the store through
    // `pthread_create`. The next registration builds the new collector.
    COLLECTOR.store(ptr::null_mut(), Ordering::Relaxed);
}

/// Pins the current thread. The caller must be inside the allocator (re-entrancy flag
/// set): the first pin of a thread registers it, which allocates.
pub fn pin() -> Guard {
    let handle = HANDLE.with(|h| h.get());
    let handle = if handle.is_null() { register() } else { handle };
    // SAFETY: `handle` was written by `register` on this thread and is dropped only by
    // `release_thread` on this thread, after which the slot is null again.
    unsafe { (*handle).pin() }
}

#[cold]
#[inline(never)]
fn register() -> *mut LocalHandle {
    let slot = meta::alloc(
        core::mem::size_of::<LocalHandle>(),
        core::mem::align_of::<LocalHandle>(),
    ) as *mut LocalHandle;
    if slot.is_null() {
        crate::fatal("out of metadata memory registering a thread with the epoch collector");
    }
    // SAFETY: `slot` is fresh metadata memory sized and aligned for a LocalHandle.
    unsafe { slot.write(collector().register()) };
    HANDLE.with(|h| h.set(slot));
    // A thread that never gets a heap (only large objects) must still unregister at
    // exit: a key of our own whose destructor does it (a no-op if the heap's exit hook
    // already did). Setting the value again after a destructor ran makes glibc run it
    // again, so a late re-registration is released too.
    if let Some(key) = exit_key() {
        // SAFETY: a valid key; the value is only a marker.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<libc::c_void>()) };
    }
    slot
}

/// Unregisters threads that registered (see `register`) at their exit.
static EXIT_KEY: crate::thread::ExitKey = crate::thread::ExitKey::new(on_thread_exit);

fn exit_key() -> Option<libc::pthread_key_t> {
    EXIT_KEY.get(|| {})
}

unsafe extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    let _inside = crate::Reentrancy::enter();
    release_thread();
}

/// Unregisters the current thread (thread exit). Safe to call when never registered.
pub fn release_thread() {
    let handle = HANDLE.with(|h| h.replace(core::ptr::null_mut()));
    if !handle.is_null() {
        // SAFETY: `handle` is this thread's registration, not pinned now (we are not
        // inside a table operation), and nobody else holds it.
        unsafe {
            // Blocks a tree user left pending go to the collector before we leave it.
            seal(&(*handle).pin());
            core::ptr::drop_in_place(handle);
            meta::free(handle as *mut u8);
        }
    }
}

/// Frees a metadata block once every thread pinned now has unpinned.
///
/// Blocks are batched: a table update unlinks several (copied tree nodes, detached
/// descriptors) and `seal` hands them to the collector as one deferred function, which
/// frees them under one metadata lock. One function per block made crossbeam's
/// collection (every 128th pin, at most 512 functions) fall behind a burst of updates:
/// building a table of 32K regions left 78 MB of metadata waiting for 5 MB live,
/// scattering the live descriptors over pages readers then missed in the TLB. And since
/// pinned readers run the collection, fewer functions and lock round trips also keep
/// garbage work off the lookup path.
///
/// # Safety
/// `p` must be a metadata block that no new reader can reach any more (unlinked).
pub unsafe fn defer_meta_free(guard: &Guard, p: *mut u8) {
    let full = PENDING.with(|pending| {
        // SAFETY: only this thread touches its batch, and not re-entrantly (nothing
        // below calls back into this module).
        let pending = unsafe { &mut *pending.get() };
        pending.blocks[pending.len] = p as usize;
        pending.len += 1;
        pending.len == BATCH
    });
    if full {
        seal(guard);
    }
}

/// Hands this thread's pending blocks to the collector, to be freed after the grace
/// period that starts now (later than when they were unlinked: only safer). Table
/// updates call it at their end, while still pinned.
pub fn seal(guard: &Guard) {
    let mut batch = [0usize; BATCH];
    let len = PENDING.with(|pending| {
        // SAFETY: as in `defer_meta_free`.
        let pending = unsafe { &mut *pending.get() };
        batch[..pending.len].copy_from_slice(&pending.blocks[..pending.len]);
        core::mem::take(&mut pending.len)
    });
    if len == 0 {
        return;
    }
    let words = meta::alloc(
        (LIST_HEADER + len) * size_of::<usize>(),
        align_of::<usize>(),
    ) as *mut usize;
    if words.is_null() {
        // Metadata exhausted: one deferred function per block, as crossbeam can store
        // those inline.
        for &p in &batch[..len] {
            // SAFETY: each block was unlinked before `defer_meta_free` took it; the
            // closure captures one word and runs after the grace period.
            unsafe { guard.defer_unchecked(move || meta::free(p as *mut u8)) };
        }
        return;
    }
    // SAFETY: `words` is a fresh block of LIST_HEADER + len words: the link, the count,
    // then the blocks.
    unsafe {
        words.add(1).write(len);
        core::ptr::copy_nonoverlapping(batch.as_ptr(), words.add(LIST_HEADER), len);
    }
    let list = words as usize;
    // SAFETY: the closure captures one word (inline in crossbeam's bag) and runs after
    // the grace period, when no reader can hold any block of the list; the list block
    // itself was never published.
    unsafe { guard.defer_unchecked(move || expired(list as *mut usize)) };
}

/// A sealed list: `[link, count, block...]`.
const LIST_HEADER: usize = 2;

/// Lists whose grace period has passed, waiting for a writer to free them: a lock-free
/// stack pushed by whichever thread runs crossbeam's collection and emptied whole (swap
/// with null) by `reclaim`, so it has no ABA hazard.
static EXPIRED: AtomicPtr<usize> = AtomicPtr::new(core::ptr::null_mut());

/// Runs when a list's grace period has passed: it only pushes the list, lock-free. The
/// collection runs on any pinned thread, mostly lookup readers; if it freed the blocks
/// itself, readers would take the metadata lock, and one preempted there (readers are
/// oversubscribed) stalled every writer that needed metadata.
fn expired(list: *mut usize) {
    let mut head = EXPIRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: the list's link word is ours: it is off every stack.
        unsafe { list.write(head as usize) };
        // Release publishes the link to `reclaim`'s Acquire swap.
        match EXPIRED.compare_exchange_weak(head, list, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => head = seen,
        }
    }
}

/// Frees every expired list's blocks, and the lists, under one metadata lock. Table
/// writers call it after each update, outside the writer mutex.
pub fn reclaim() {
    if EXPIRED.load(Ordering::Relaxed).is_null() {
        return;
    }
    // Acquire: see `expired`.
    let mut list = EXPIRED.swap(core::ptr::null_mut(), Ordering::Acquire);
    let mut blocks = core::iter::from_fn(|| {
        // SAFETY: each list on the stack is a sealed list past its grace period: its
        // blocks and itself are unreachable metadata blocks, and only we took them.
        let here = unsafe { list.as_mut() }?;
        let this = here as *mut usize;
        // SAFETY: as above; `seal` wrote the count and the blocks.
        let (next, held) = unsafe {
            let count = *this.add(1);
            (
                *this as *mut usize,
                core::slice::from_raw_parts(this.add(LIST_HEADER), count),
            )
        };
        list = next;
        Some(held.iter().map(|&b| b as *mut u8).chain([this as *mut u8]))
    })
    .flatten();
    // SAFETY: as above.
    unsafe { meta::free_all(&mut blocks) };
}
