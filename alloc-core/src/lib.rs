//! rangealloc-core: the allocator engine.
//!
//! Reading order: `heap/` is the small-object fast path (thread-local; its fast paths
//! never touch the region table, its segments are regions of it); `large/` serves big objects, one region each; `region/` is the region
//! table (the user-space VMA tree with lock-free lookups and per-region locks); `purge/`
//! returns memory; `meta/` holds our own metadata; `os/` is the only code that makes
//! memory syscalls; `space` maps addresses to their owner; `init` is the process and
//! thread lifecycle (first-use set-up, fork handlers, thread exit). This file is the
//! public surface (used by `rangealloc` and the C shim): it owns `MALLOC_ALIGN`, `fatal`
//! and the entry points, and calls `heap`, `large`, `meta`, `misuse`, `os`, `prof`,
//! `space`, `thread` and `init`.

// Model builds leave out the code that uses most of the descriptor (see below), and the
// loom-only constructors cannot be `const`, hence not `Default`-able either.
#![cfg_attr(loom, allow(dead_code, clippy::new_without_default))]
// Every public item of the front door is documented (the internals are `doc(hidden)`).
#![warn(missing_docs)]

// The engine's internals are `#[doc(hidden)]`: public because the front ends (`rangealloc`,
// the C library), the benchmarks and the tests reach into them, not the crate's front door,
// which is this file's functions and the `options`, `stats`, `snapshot`, `tuning`,
// `reclaim`, `prof` and `os` (errors, syscall counts) modules.
//
// `--cfg loom` builds only what the loom models need (`sync`, the region table without
// the process's arena set, the heap's `page`, `meta`'s block stacks): everything else
// holds statics that loom's atomics cannot initialise, so it is left out of model builds.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod heap;
/// Model builds keep the heap's page handshake (and the size classes it checks against),
/// which `heap/page_loom.rs` and `heap/drain_loom.rs` model-check, and the segments
/// lock (`heap/segments_lock_loom.rs`).
#[cfg(loom)]
#[doc(hidden)]
pub mod heap {
    #[cfg(test)]
    mod drain_loom;
    pub mod page;
    #[cfg(test)]
    mod page_loom;
    pub mod segments_lock;
    #[cfg(test)]
    mod segments_lock_loom;
    pub mod size_class;
}
#[cfg(not(loom))]
#[doc(hidden)]
pub mod init;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod large;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod meta;
/// Model builds keep the metadata arena's lock-free block stacks, which
/// `meta/stack_loom.rs` model-checks, and serve the region table's metadata from a
/// stand-in on the system allocator (`meta/model.rs`).
#[cfg(loom)]
#[doc(hidden)]
pub mod meta {
    mod model;
    pub mod stack;
    #[cfg(test)]
    mod stack_loom;
    pub use model::*;
}
#[cfg(not(loom))]
mod misuse;
pub mod options;
pub mod os;
#[cfg(not(loom))]
pub mod prof;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod purge;
#[cfg(not(loom))]
pub mod reclaim;
#[doc(hidden)]
pub mod region;
#[cfg(not(loom))]
pub mod snapshot;
#[doc(hidden)]
pub mod space;
#[doc(hidden)]
pub mod sync;

pub mod stats;
#[doc(hidden)]
pub mod thread;
#[cfg(not(loom))]
pub mod tuning;

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
    // The heap profiler costs nothing here: small blocks are counted at refills in the
    // heap's slow path, large objects in `alloc_generic`.
    if size <= SMALL_MAX && align <= MALLOC_ALIGN {
        return heap::alloc_small(heap::class_of(size));
    }
    alloc_generic(size, align, false, true)
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
    alloc_generic(size, align, true, true)
}

/// True if `alloc(size, align)` is served from the heap's pages (small blocks, or medium
/// sizes with a large alignment), whose blocks the heap profiler counts at refills; the
/// rest are large objects, counted one by one.
#[cfg(not(loom))]
pub(crate) fn served_by_pages(size: usize, align: usize) -> bool {
    (size <= SMALL_MAX && align <= MALLOC_ALIGN)
        || (align <= os::PAGE_SIZE && heap::class_for(size, align).is_some())
}

/// `alloc` for `realloc`, whose large results the profiler counts in `realloc_profiled`
/// (small ones are counted at refills, as every small block is).
#[inline(always)]
#[cfg(not(loom))]
fn alloc_in_realloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size <= SMALL_MAX && align <= MALLOC_ALIGN {
        let p = heap::alloc_small(heap::class_of(size));
        if zero && !p.is_null() {
            // SAFETY: a fresh block of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    alloc_generic(size, align, zero, false)
}

/// Everything `alloc` does not do inline: nested requests, medium sizes with large
/// alignments and large objects, which count toward the heap profiler's sample point
/// here when `profiled` (one by one; small blocks are counted at refills).
#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn alloc_generic(size: usize, align: usize, zero: bool, profiled: bool) -> *mut u8 {
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
    // A large object may be the process's first allocation (the small path gets here
    // through its first heap instead): the set-up (options, fork handlers) comes first.
    init::ensure_process();
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
    if profiled && prof::sampling() {
        // Not a tail call: `prof` skips this frame by count.
        return core::hint::black_box(prof::alloc_large(size, align, zero));
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
    if let Some(seg) = space::segment_slot(p as usize) {
        // SAFETY: `seg` is the live segment `segment_slot` found for `p`.
        match unsafe { heap::free_small_fast(seg, p) } {
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

/// C23's `free_sized` / `free_aligned_sized`: frees `p`, which the caller says was
/// allocated with `size` bytes (and `align`, a power of two, or 1 when unknown). A size
/// larger than the block's usable size, or a block not aligned to `align`, cannot
/// belong to it: misuse, reported before any state changes.
///
/// The size saves no lookup here: the block's size class sits in its page header, found
/// by masking, in the cache line `free` reads anyway. It saves the validation read when
/// it is at or below the smallest usable size the block's kind can have (a small class's
/// minimum, a page for a large object).
///
/// # Safety
/// As `free`.
#[inline]
#[cfg(not(loom))]
pub unsafe fn free_sized_as(p: *mut u8, size: usize, align: usize, call: &'static str) {
    if (p as usize) & (align - 1) != 0 {
        misuse::report(Misuse::Misaligned, call, p);
    }
    let too_large = match space::kind_of(p as usize) {
        // SAFETY: the slot is a live segment; the header read only needs that.
        SlotKind::Segment => {
            size > heap::size_class::MIN_BLOCK && size > unsafe { heap::usable_size(p) }
        }
        // A pointer the table does not know is `free_as`'s to report.
        SlotKind::Table if size > os::PAGE_SIZE => {
            large::usable_size(p).is_some_and(|usable| size > usable)
        }
        _ => false,
    };
    if too_large {
        misuse::report(Misuse::SizeTooLarge, call, p);
    }
    // SAFETY: forwarded contract.
    unsafe { free_as(p, call) }
}

/// Reports a block freed with an alignment that cannot be its own (C23's
/// `free_aligned_sized` with an alignment that is no power of two), and aborts.
#[cold]
#[cfg(not(loom))]
pub fn report_misaligned(call: &'static str, p: *const u8) -> ! {
    misuse::report(Misuse::Misaligned, call, p)
}

#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn free_other(p: *mut u8, call: &'static str) {
    match space::kind_of(p as usize) {
        SlotKind::Table => {
            // SAFETY: `p` lies in a table region, and nothing of its free has happened.
            if unsafe { prof::large_freed(p) } {
                // Deferred by the profiler (a signal handler of the thread holding its
                // table's lock): freed later, unchanged until then.
                return;
            }
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
pub(crate) unsafe fn checked_usable_size(p: *const u8, call: &str) -> usize {
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
#[inline]
pub unsafe fn realloc(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    if prof::watching() {
        // SAFETY: forwarded contract.
        return unsafe { prof::realloc_profiled(p, new_size, align) };
    }
    // SAFETY: forwarded contract.
    if unsafe { stays_in_place(p, new_size) } {
        return p;
    }
    // SAFETY: forwarded contract.
    unsafe { realloc_unprofiled(p, new_size, align) }
}

/// True when `p` is a live small block whose block still fits `new_size` and wastes at
/// most half of it (the rule of `realloc_unprofiled`): the common in-place case, found
/// with one lookup of the page and no call. False for anything else, misuse included,
/// which the full path reports.
///
/// # Safety
/// As `realloc`.
#[inline(always)]
#[cfg(not(loom))]
unsafe fn stays_in_place(p: *mut u8, new_size: usize) -> bool {
    let Some(seg) = space::segment_slot(p as usize) else {
        return false;
    };
    // SAFETY: `seg` is the live segment `segment_slot` found for `p`.
    match unsafe { heap::live_block_size(seg, p) } {
        Some(old) => new_size <= old && new_size >= old / 2,
        None => false,
    }
}

/// `realloc` without the profiler's hook.
///
/// # Safety
/// As `realloc`.
#[cfg(not(loom))]
pub(crate) unsafe fn realloc_unprofiled(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // The common case first (`realloc` tested it already; the profiler's path has not).
    // SAFETY: forwarded contract.
    if unsafe { stays_in_place(p, new_size) } {
        return p;
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
    // A small block growing past the small limit is likely to keep growing (a `Vec`
    // doubling): it gets a large object placed with room to do so in place. Neither way
    // counts a large result toward the profiler's sample point: `realloc_profiled` did
    // when it sends us here (a small result is counted at its page's refill).
    let q = if new_size > SMALL_MAX && new_size > old && !thread::inside_allocator() {
        large::alloc_growing(new_size, align)
    } else {
        alloc_in_realloc(new_size, align, false)
    };
    if !q.is_null() {
        // SAFETY: distinct live blocks, each at least min(old, new_size) bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old.min(new_size));
            free(p);
        }
    }
    q
}

/// The fork handlers, which the engine registers with `pthread_atfork` itself on its
/// first allocation (for every front end). Calling them again around a `fork` (a
/// program that registered them too) nests harmlessly.
#[cfg(not(loom))]
pub use init::{fork_child, fork_parent, fork_prepare};
