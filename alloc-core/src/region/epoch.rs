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
//! without `Drop`, and `release_thread` drops it from our thread-exit hook.

use crate::meta;
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::cell::Cell;
use std::sync::OnceLock;

static COLLECTOR: OnceLock<Collector> = OnceLock::new();

thread_local! {
    static HANDLE: Cell<*mut LocalHandle> = const { Cell::new(core::ptr::null_mut()) };
    /// Frees this thread deferred since it last flushed (see `flush_if_due`).
    static DEFERRED: Cell<usize> = const { Cell::new(0) };
}

/// A thread that deferred this many frees flushes: its bag goes to the global queue and
/// it runs a collection. crossbeam collects on its own only every 128th pin and then at
/// most 8 bags (512 frees), slower than a burst of table updates defers (a placement
/// copies several nodes and may detach descriptors): without this, building a table of
/// 32K regions left 78 MB of metadata waiting for a grace period (5 MB live), scattering
/// the live descriptors over pages that readers then miss in the TLB.
const FLUSH_AFTER: usize = 32;

fn collector() -> &'static Collector {
    COLLECTOR.get_or_init(Collector::new)
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
            core::ptr::drop_in_place(handle);
            meta::free(handle as *mut u8);
        }
    }
}

/// Frees a metadata block once every thread pinned now has unpinned.
///
/// # Safety
/// `p` must be a metadata block that no new reader can reach any more (unlinked).
pub unsafe fn defer_meta_free(guard: &Guard, p: *mut u8) {
    let addr = p as usize;
    // SAFETY: the closure captures one word (stored inline, no allocation per call) and
    // runs after the grace period, when no reader can hold `p`.
    unsafe { guard.defer_unchecked(move || meta::free(addr as *mut u8)) };
    DEFERRED.with(|d| d.set(d.get() + 1));
}

/// Flushes this thread's deferred frees and collects expired ones, if it deferred at
/// least `FLUSH_AFTER` since the last time. Call with no lock held but `guard`'s pin (a
/// collection runs other threads' deferred frees, which take the metadata lock).
pub fn flush_if_due(guard: &Guard) {
    if DEFERRED.with(|d| d.get()) >= FLUSH_AFTER {
        DEFERRED.with(|d| d.set(0));
        guard.flush();
    }
}
