//! rangealloc-core: the allocator engine.
//!
//! Reading order: `heap/` is the small-object fast path (thread-local, never touches the
//! region table); `large/` serves big objects, one region each; `region/` is the region
//! table (the user-space VMA tree with lock-free lookups and per-region locks); `purge/`
//! returns memory; `meta/` holds our own metadata; `os/` is the only code that makes
//! memory syscalls; `space` maps addresses to their owner. This file is the public
//! surface (used by `rangealloc` and the C shim) and the re-entrancy guard.

// Model builds leave out the code that uses most of the descriptor (see below), and the
// loom-only constructors cannot be `const`, hence not `Default`-able either.
#![cfg_attr(loom, allow(dead_code, clippy::new_without_default))]

// `--cfg loom` builds only what the loom models need (`sync`, `region::lock` and the
// `Region` descriptor, the heap's `page`): everything else holds statics that loom's atomics cannot
// initialise, so it is left out of model builds.
#[cfg(not(loom))]
pub mod heap;
/// Model builds keep the heap's page handshake (and the size classes it checks against),
/// which `heap/page_loom.rs` model-checks.
#[cfg(loom)]
pub mod heap {
    pub mod page;
    #[cfg(test)]
    mod page_loom;
    pub mod size_class;
}
#[cfg(not(loom))]
pub mod large;
#[cfg(not(loom))]
pub mod meta;
#[cfg(not(loom))]
mod misuse;
pub mod options;
pub mod os;
#[cfg(not(loom))]
pub mod purge;
pub mod region;
#[cfg(not(loom))]
pub mod snapshot;
pub mod space;
pub mod sync;

pub mod stats;
pub mod thread;

#[cfg(not(loom))]
pub(crate) use thread::Reentrancy;

/// The alignment C's `malloc` guarantees on x86_64 (`alignof(max_align_t)`).
pub const MALLOC_ALIGN: usize = 16;

/// Reports an internal failure that leaves no safe way on, and aborts.
#[cold]
pub fn fatal(message: &str) -> ! {
    os::write_stderr(b"rangealloc: fatal: ");
    os::write_stderr(message.as_bytes());
    os::write_stderr(b"\n");
    std::process::abort()
}

// ---------------------------------------------------------------------------------------
// The public allocation API.
// ---------------------------------------------------------------------------------------

#[cfg(not(loom))]
use heap::SMALL_MAX;
#[cfg(not(loom))]
use misuse::Misuse;
#[cfg(not(loom))]
use space::SlotKind;

/// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
///
/// # Safety
/// `align` must be a power of two.
#[inline]
#[cfg(not(loom))]
pub unsafe fn alloc(size: usize, align: usize) -> *mut u8 {
    if size <= SMALL_MAX && align <= MALLOC_ALIGN {
        return heap::alloc_small(heap::class_of(size));
    }
    alloc_generic(size, align, false)
}

/// Like `alloc`, zero-filled.
///
/// # Safety
/// As `alloc`.
#[inline]
#[cfg(not(loom))]
pub unsafe fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    if size <= SMALL_MAX && align <= MALLOC_ALIGN {
        let p = heap::alloc_small(heap::class_of(size));
        if !p.is_null() {
            // SAFETY: a fresh block of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    alloc_generic(size, align, true)
}

#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn alloc_generic(size: usize, align: usize, zero: bool) -> *mut u8 {
    if thread::inside_allocator() {
        // Nested inside the allocator (a dependency, or a diagnostic callback, asking
        // for a big block): never back into the table, whose mutex we may hold.
        let p = meta::alloc(size, align);
        if zero && !p.is_null() {
            // SAFETY: a fresh metadata block of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    if align <= os::PAGE_SIZE {
        if let Some(class) = heap::class_for(size, align) {
            let p = heap::alloc_small(class);
            if zero && !p.is_null() {
                // SAFETY: a fresh block of at least `size` bytes.
                unsafe { core::ptr::write_bytes(p, 0, size) };
            }
            return p;
        }
    }
    large::alloc(size, align, zero)
}

/// The usable size `alloc(size, align)` would give (what `usable_size` then reports), or
/// `None` if the request can never succeed: jemalloc's `nallocx`, which programs use to
/// account for memory (redis does) or to ask for exactly a class size.
#[cfg(not(loom))]
pub fn good_size(size: usize, align: usize) -> Option<usize> {
    if size <= SMALL_MAX && align <= MALLOC_ALIGN {
        return Some(heap::class_size(heap::class_of(size)));
    }
    if align <= os::PAGE_SIZE {
        if let Some(class) = heap::class_for(size, align) {
            return Some(heap::class_size(class));
        }
    }
    large::good_size(size, align)
}

/// Frees a block; null is a no-op. Misuse (double free, a pointer we never returned,
/// an interior pointer) aborts with a message naming the pointer, before any state
/// changes.
///
/// # Safety
/// `p` must be null or a pointer this allocator returned (anything else is detected
/// where the checks can see it, see the README's guarantees).
#[inline]
#[cfg(not(loom))]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { free_as(p, "free") }
}

/// `free` for a caller with another name (`operator delete`, `cfree`, `dallocx`...):
/// a misuse message names `call`. The name travels only to the cold reporting paths.
///
/// Inlined into every caller, so `free` and each `operator delete` of the C library are
/// one function with no call before the block is on its free list.
///
/// # Safety
/// As `free`.
#[inline(always)]
#[cfg(not(loom))]
pub unsafe fn free_as(p: *mut u8, call: &'static str) {
    if space::kind_of(p as usize) == SlotKind::Segment {
        // SAFETY: the slot is a live segment.
        match unsafe { heap::free_small_fast(p) } {
            heap::FastFree::Done => return,
            // SAFETY: `free_small_fast` checked that this thread's heap owns the page.
            heap::FastFree::Retire(heap, page) => {
                return unsafe { heap::retire_after_free(heap, page) }
            }
            // SAFETY: a validated live block, unchanged since.
            heap::FastFree::NotOwned(page, block) => {
                return unsafe { heap::free_not_owned(page, block) }
            }
            heap::FastFree::Slow => {}
        }
    }
    // SAFETY: forwarded contract; the fast path changed nothing.
    unsafe { free_slow(p, call) }
}

/// `free_as` in full: remote frees, large and metadata blocks, misuse reports.
///
/// # Safety
/// As `free`.
#[cold]
#[inline(never)]
#[cfg(not(loom))]
unsafe fn free_slow(p: *mut u8, call: &'static str) {
    match space::kind_of(p as usize) {
        // SAFETY: the slot is a live segment.
        SlotKind::Segment => match unsafe { heap::free_small(p) } {
            Ok(()) => {}
            Err(heap::SmallFreeError::DoubleFree) => misuse::report(Misuse::DoubleFree, call, p),
            Err(heap::SmallFreeError::NotABlock) => misuse::report(Misuse::NotAllocated, call, p),
        },
        _ => free_other(p, call),
    }
}

#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn free_other(p: *mut u8, call: &'static str) {
    match space::kind_of(p as usize) {
        SlotKind::Table => {
            if let Err(e) = large::free(p) {
                misuse::report(Misuse::from(e), call, p);
            }
        }
        // SAFETY: a block of the metadata arena (nested or exiting-thread allocations).
        SlotKind::Meta => unsafe { meta::free(p) },
        SlotKind::Foreign if p.is_null() => {}
        _ => misuse::report(Misuse::NotAllocated, call, p),
    }
}

/// The usable size of a live block (at least the size asked for).
///
/// # Safety
/// `p` must be a live block of this allocator; other pointers abort.
#[cfg(not(loom))]
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: caller contract; `checked_usable_size` validates.
    unsafe { checked_usable_size(p, "malloc_usable_size") }
}

#[cfg(not(loom))]
unsafe fn checked_usable_size(p: *const u8, call: &str) -> usize {
    match space::kind_of(p as usize) {
        // SAFETY: the slot is a live segment.
        SlotKind::Segment => unsafe {
            if !heap::is_block_start(p) {
                misuse::report(Misuse::NotAllocated, call, p);
            }
            if heap::is_free_block(p) {
                misuse::report(Misuse::UseAfterFree, call, p);
            }
            heap::usable_size(p)
        },
        SlotKind::Table => match large::usable_size(p) {
            Some(len) => len,
            None => misuse::report(Misuse::NotAllocated, call, p),
        },
        // SAFETY: a metadata block.
        SlotKind::Meta => unsafe { meta::usable_size(p) },
        SlotKind::Foreign => misuse::report(Misuse::NotAllocated, call, p),
    }
}

/// Resizes a live block to `new_size` bytes aligned to `align`, in place when possible.
/// Returns null (leaving `p` intact) when out of memory.
///
/// # Safety
/// `p` must be a live, non-null block of this allocator, allocated with `align`.
#[cfg(not(loom))]
pub unsafe fn realloc(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // The common case first: a live small block whose block still fits the new size
    // and wastes at most half of it stays put (the rule below), found with one lookup
    // of the page. Anything else, misuse included, takes the full path.
    if space::kind_of(p as usize) == SlotKind::Segment {
        // SAFETY: the slot is a live segment.
        if let Some(old) = unsafe { heap::live_block_size(p) } {
            if new_size <= old && new_size >= old / 2 {
                return p;
            }
        }
    }
    // SAFETY: validated by `checked_usable_size`, which aborts on foreign pointers.
    let old = unsafe { checked_usable_size(p, "realloc") };
    let kind = space::kind_of(p as usize);
    if kind == SlotKind::Table && (new_size > SMALL_MAX || align > os::PAGE_SIZE) {
        // SAFETY: `p` is a live large object of `old` bytes.
        return unsafe { large::realloc(p, old, new_size, align) };
    }
    // Small (or meta) blocks stay put while the new size fits and wastes at most half.
    if new_size <= old && new_size >= old / 2 && kind != SlotKind::Table {
        return p;
    }
    // SAFETY: `align` is the block's alignment (caller contract).
    let q = unsafe { alloc(new_size, align) };
    if !q.is_null() {
        // SAFETY: distinct live blocks, each at least min(old, new_size) bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old.min(new_size));
            free(p);
        }
    }
    q
}

/// `pthread_atfork` handlers: take every allocator lock before `fork` so the child never
/// inherits one mid-update, and release them in both processes.
/// Lock order: heap lists, then the table's writer mutex, then the metadata arena (no
/// path holds a later one while taking an earlier one).
#[cfg(not(loom))]
pub fn fork_prepare() {
    SLOT_BEFORE_FORK.with(|s| s.set(thread::get()));
    // Anything the locking below allocates goes to the metadata arena.
    thread::set(thread::BUSY);
    heap::fork_prepare();
    region::TABLE.fork_prepare();
    meta::fork_prepare();
}

#[cfg(not(loom))]
pub fn fork_parent() {
    release_fork_locks();
}

#[cfg(not(loom))]
pub fn fork_child() {
    release_fork_locks();
    // SAFETY: we are the child's only thread, the locks are released and nothing else
    // runs yet. The epoch first: the table's repair already pins.
    unsafe {
        region::epoch::after_fork_in_child();
        region::TABLE.after_fork_in_child();
    }
    heap::fork_child();
    options::after_fork_in_child();
}

/// Releases what `fork_prepare` took (reverse order) and restores the thread slot.
#[cfg(not(loom))]
fn release_fork_locks() {
    // SAFETY: `fork_prepare` ran on this thread (in the child, the only one left).
    unsafe {
        meta::fork_release();
        region::TABLE.fork_release();
        heap::fork_release();
    }
    thread::set(SLOT_BEFORE_FORK.with(|s| s.get()));
}

#[cfg(not(loom))]
thread_local! {
    static SLOT_BEFORE_FORK: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}
