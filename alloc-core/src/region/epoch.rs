//! Our own epoch collector (crossbeam-epoch) for the region table's grace periods.
//! It owns the collector and each thread's registration (with its exit key); it calls
//! `crossbeam_epoch`, `meta` (the handle lives in metadata memory), `thread` (the exit
//! key, the re-entrancy guard) and `stats` (time spent in the dependency).
//!
//! Why not `crossbeam_epoch::pin()`: the default collector is built lazily inside a
//! `Once` and allocates, so pinning from inside `GlobalAlloc::alloc` re-enters that
//! `Once` on the program's first allocation and deadlocks, and its thread-local handle
//! needs a TLS destructor (glibc registers those with `calloc`, i.e. with us). Here the
//! collector is built once under the re-entrancy flag (its allocations go to `meta`),
//! each thread's `LocalHandle` lives in metadata memory behind a `const` thread-local
//! without `Drop`, and `release_thread` drops it from our thread-exit hook. A fork
//! child abandons the collector and starts a new one (`after_fork_in_child`). The
//! blocks the region table frees after a grace period are batched and deferred by
//! `region::blocks`, per arena.

use crate::meta;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::cell::Cell;

/// The collector threads register with: built by the first registration, replaced (and
/// the old one leaked) in a fork child, never freed. Not a `OnceLock`: that cannot be
/// replaced, and a parent thread caught inside its initialisation at `fork` would leave
/// the child waiting for it forever.
static COLLECTOR: AtomicPtr<Collector> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    static HANDLE: Cell<*mut LocalHandle> = const { Cell::new(core::ptr::null_mut()) };
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
/// Blocks an arena had batched but not sealed stay batched (`region::blocks`) and wait
/// for a grace period of the new collector: no thread can hold them, since no thread of
/// the child was pinned before it started (checked below). Lists whose grace period
/// passed in the parent stay on their arena's expired stack for the child's writers.
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
    // crossbeam's collection runs inside `pin` (every 128th), freeing its own sealed-bag
    // nodes: its process-wide locks are counted as a dependency's.
    let _dependency = crate::stats::OnDependency::enter();
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
            core::ptr::drop_in_place(handle);
            meta::free(handle as *mut u8);
        }
    }
}
