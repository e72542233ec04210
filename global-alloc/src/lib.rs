//! `rangealloc` as a Rust global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static A: rangealloc::RangeAlloc = rangealloc::RangeAlloc;
//! ```
//!
//! A thin adapter over `rangealloc-core`: no logic of its own beyond mapping `Layout`s.

use core::alloc::{GlobalAlloc, Layout};
use rangealloc_core as core_api;

pub use rangealloc_core::os::{Syscall, SyscallCounts};

/// The allocator. Zero-sized; all state lives in the engine.
pub struct RangeAlloc;

// SAFETY: every method forwards to the engine, which returns blocks of at least the
// requested size and alignment, or null, and accepts back exactly the blocks it returned.
unsafe impl GlobalAlloc for RangeAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: Layout guarantees a power-of-two alignment.
        unsafe { core_api::alloc(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { core_api::alloc_zeroed(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from this allocator.
        unsafe { core_api::free(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` is live and was allocated with `layout`.
        unsafe { core_api::realloc(ptr, new_size, layout.align()) }
    }
}

/// Syscalls the allocator has issued so far, by kind.
pub fn syscall_counts() -> SyscallCounts {
    rangealloc_core::os::syscall_counts()
}

/// The engine itself, for benchmarks and tools that study its parts (the region table,
/// size classes, counters).
pub use rangealloc_core as engine;

pub use rangealloc_core::options::Options;
pub use rangealloc_core::snapshot::{ClassStats, LockStats, RegionStats, Stats};

/// A snapshot of the allocator's statistics (allocated, active, resident, mapped,
/// retained, metadata, regions by kind, per-class counts, syscalls, region-lock
/// counters, purge counts). Costs a walk over the heaps and the region tree.
pub fn stats() -> Stats {
    rangealloc_core::snapshot::snapshot()
}

/// Writes the human-readable statistics report to stderr.
pub fn print_stats() {
    rangealloc_core::snapshot::print_to_stderr()
}

/// The options in force (parsed once from `RANGEALLOC_OPTIONS`).
pub fn options() -> Options {
    rangealloc_core::options::get()
}

/// Returns every free region's pages to the OS now, whatever the purge delay; returns
/// the bytes purged.
pub fn purge() -> usize {
    rangealloc_core::region::TABLE.collect_retired();
    rangealloc_core::purge::purge_all()
}

/// Heap profiling: sampled allocation stacks as pprof profiles (see the README's
/// "Heap profiling"). Sampling starts with `RANGEALLOC_OPTIONS=prof=1` or
/// `set_active(true)`; one allocation per `prof_sample` bytes (512 KiB by default) on
/// average records its call stack.
pub mod profile {
    use std::io;
    use std::path::Path;

    /// Writes a gzip-compressed pprof profile (`alloc_objects`, `alloc_space`,
    /// `inuse_objects`, `inuse_space`, with the process's mappings) to `path`, for
    /// `go tool pprof <binary> <path>`. Fails with `NotFound` if profiling was never on.
    pub fn dump(path: impl AsRef<Path>) -> io::Result<()> {
        rangealloc_core::prof::dump(path.as_ref()).map_err(io::Error::from_raw_os_error)
    }

    /// True while allocations are being sampled.
    pub fn enabled() -> bool {
        rangealloc_core::prof::active()
    }

    /// Starts or stops sampling; returns whether it was on. Samples already taken
    /// stay, and their frees are still accounted while sampling is off.
    pub fn set_active(active: bool) -> bool {
        rangealloc_core::prof::set_active(active)
    }

    /// Zeroes the allocation totals of every stack (`alloc_*`); the in-use totals
    /// follow the live objects and stay.
    pub fn reset() {
        rangealloc_core::prof::reset()
    }
}
